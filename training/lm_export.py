"""Export an `RNNLanguageModel` as a prompt graph and a one-step graph that share one weights file, and check them.

`prompt.onnx` reads whole padded prefixes in one call: (ids, lengths) -> the log-prob of each next input token
(`token_log_probs`, for scoring), the next-token log-probs after each row's last token (`log_probs`) and the state
there. `step.onnx` reads one token per row: (tokens, *states, top_k) -> `log_probs`, the next states and each row's
`top_k` best candidates (`top_log_probs`, `top_ids`). Both keep their initializers in `weights.bin` (ONNX external
data), written once, so the version holds the weights once. The TorchScript exporter (`dynamo=False`) is used:
`torch.export` cannot trace `pack_padded_sequence`.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.lm import LMConfig, RNNLanguageModel
from service.engine.decoding import TOP_K_INPUT, TOP_K_OUTPUTS
from service.engine.text import BOS_ID, EOS_ID, PAD_ID
from training.seq2seq_export import add_top_k

OPSET = 17
PARITY_TOL = 1e-4
PAD_INVARIANCE_TOL = 1e-5
WEIGHTS = "weights.bin"
MIN_SHARED_BYTES = 1024  # smaller initializers (shapes, scalars) stay inside each graph
WEIGHTS_DTYPES = ("float32", "float16")


class ExportParityError(RuntimeError):
    """The exported graphs disagree with the torch model."""


class _PromptGraph(nn.Module):
    def __init__(self, model: RNNLanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        logits, state = self.model(ids, lengths)  # (B, T, V)
        log_probs = F.log_softmax(logits, dim=-1)
        following = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)  # (B, T): the next input token (last column unused)
        token_log_probs = log_probs.gather(2, following[..., None])[..., 0]  # (B, T)
        last = log_probs[torch.arange(ids.size(0)), lengths - 1]  # (B, V)
        return token_log_probs, last, *(state[n] for n in self.model.cfg.state_names)


class _StepGraph(nn.Module):
    def __init__(self, model: RNNLanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        state = dict(zip(self.model.cfg.state_names, states, strict=True))
        logits, new = self.model.step(tokens, state)
        return F.log_softmax(logits, dim=-1), *(new[n] for n in self.model.cfg.state_names)


def interface(cfg: LMConfig) -> dict[str, Any]:
    """Graph files, input/output names and state names; goes into config.json."""
    states = cfg.state_names
    return {
        "graphs": {"prompt": "prompt.onnx", "step": "step.onnx"},
        "files": {"weights": WEIGHTS},
        "prompt": {"file": "prompt.onnx", "inputs": ["ids", "lengths"],
                   "outputs": ["token_log_probs", "log_probs", *(f"{n}_out" for n in states)]},
        "step": {"file": "step.onnx", "inputs": ["tokens", *states, TOP_K_INPUT],
                 "outputs": ["log_probs", *(f"{n}_out" for n in states), *TOP_K_OUTPUTS]},
        "states": states,
        "opset": OPSET,
        "special_ids": {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID},
    }


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            axes: dict[str, dict[int, str]]) -> None:
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PackPadded shape inference and tracer int conversions
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, opset_version=OPSET,
                          dynamo=False, dynamic_axes={n: axes.get(n, {0: "B"}) for n in inputs + outputs})


def share_initializers(paths: Sequence[Path], weights: str = WEIGHTS, half: bool = False) -> None:
    """Move every sizeable initializer of the graphs into one external-data file beside them, each distinct tensor
    once (the two graphs of an LM hold the same weights). `half` stores float tensors as float16, each read through
    a Cast to float32 (onnxruntime folds it when the session loads, so the graphs compute in float32 as before)."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    folder = paths[0].parent
    offsets: dict[str, tuple[int, int]] = {}
    models = [onnx.load(str(p)) for p in paths]
    with open(folder / weights, "wb") as out:
        for model in models:
            casts = []
            for tensor in model.graph.initializer:
                if len(tensor.raw_data) < MIN_SHARED_BYTES:
                    continue
                if half and tensor.data_type == onnx.TensorProto.FLOAT:
                    name = tensor.name
                    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16),
                                                            f"{name}.float16"))
                    casts.append(helper.make_node("Cast", [tensor.name], [name], to=onnx.TensorProto.FLOAT,
                                                  name=f"{name}.to_float"))
                data = tensor.raw_data
                key = hashlib.sha256(data).hexdigest() + str(tensor.data_type) + str(list(tensor.dims))
                if key not in offsets:
                    out.write(b"\0" * (-out.tell() % 64))  # aligned, as onnx's own writer does
                    offsets[key] = (out.tell(), len(data))
                    out.write(data)
                offset, length = offsets[key]
                set_external_data(tensor, weights, offset, length)
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
            nodes = [*casts, *model.graph.node]
            model.graph.ClearField("node")
            model.graph.node.extend(nodes)
    for model, path in zip(models, paths, strict=True):
        onnx.save(model, str(path))


def round_to_half(model: RNNLanguageModel) -> None:
    """Every weight to the nearest float16 value, kept in float32: what float16 storage reads back."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def example_batch(cfg: LMConfig, lengths: list[int], seed: int) -> tuple[Tensor, Tensor]:
    """A random padded batch starting with BOS; lengths deliberately unsorted."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(EOS_ID + 1, cfg.vocab_size, (len(lengths), max(lengths)), generator=gen)
    ids[:, 0] = BOS_ID
    lens = torch.tensor(lengths, dtype=torch.long)
    return ids.masked_fill(torch.arange(max(lengths))[None, :] >= lens[:, None], PAD_ID), lens


def sessions(out_dir: Path) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return tuple(ort.InferenceSession(str(out_dir / name), opts, providers=["CPUExecutionProvider"])  # type: ignore
                 for name in ("prompt.onnx", "step.onnx"))


@torch.no_grad()
def check_graphs(model: RNNLanguageModel, out_dir: Path, seed: int = 1) -> None:
    """ONNX matches torch (1e-4) on the prompt's outputs and over a few steps; a prefix alone gives the same next-token
    distribution and state as inside a padded batch of longer prefixes (1e-5)."""
    spec = interface(model.cfg)
    prompt, step = sessions(out_dir)
    names = spec["states"]
    ids, lengths = example_batch(model.cfg, [4, 9, 1, 6, 9], seed)
    logits, state = model(ids, lengths)
    expected = F.log_softmax(logits, dim=-1)
    got = dict(zip(spec["prompt"]["outputs"], prompt.run(None, {"ids": ids.numpy(), "lengths": lengths.numpy()}),
                   strict=True))
    rows = torch.arange(len(lengths))
    worst = float(np.abs(got["log_probs"] - expected[rows, lengths - 1].numpy()).max())
    for b, n in enumerate(lengths.tolist()):  # the real positions whose next token is in the prefix
        want = expected[b, torch.arange(n - 1), ids[b, 1:n]].numpy()
        worst = max(worst, float(np.abs(got["token_log_probs"][b, : n - 1] - want).max(initial=0.0)))
    onnx_states = {n: got[f"{n}_out"] for n in names}
    for n in names:
        worst = max(worst, float(np.abs(onnx_states[n] - state[n].numpy()).max()))
    tokens = expected[rows, lengths - 1].argmax(dim=-1)
    for _ in range(3):
        step_logits, state = model.step(tokens, state)
        out = dict(zip(spec["step"]["outputs"], step.run(None, {"tokens": tokens.numpy(), **onnx_states,
                                                                  TOP_K_INPUT: np.array([3], dtype=np.int64)}),
                       strict=True))
        want = F.log_softmax(step_logits, dim=-1).numpy()
        worst = max(worst, float(np.abs(out["log_probs"] - want).max()),
                    float(np.abs(out["top_log_probs"] - np.sort(want, axis=1)[:, ::-1][:, :3]).max()))
        onnx_states = {n: out[f"{n}_out"] for n in names}
        tokens = step_logits.argmax(dim=-1)
    if not worst <= PARITY_TOL:
        raise ExportParityError(f"ONNX and torch log-probs differ by {worst:.3g} (tolerance {PARITY_TOL})")
    short = 2  # the row of length 1: alone, and inside the padded batch above
    alone = dict(zip(spec["prompt"]["outputs"], prompt.run(None, {"ids": ids[short:short + 1, :1].numpy(),
                                                                  "lengths": lengths[short:short + 1].numpy()}),
                     strict=True))
    diff = max(float(np.abs(alone["log_probs"][0] - got["log_probs"][short]).max()),
               *(float(np.abs(alone[f"{n}_out"][0] - got[f"{n}_out"][short]).max()) for n in names))
    if diff > PAD_INVARIANCE_TOL:
        raise ExportParityError(f"a prefix alone and inside a padded batch differ by {diff:.2e} "
                                f"(> {PAD_INVARIANCE_TOL})")


def export_lm(model: RNNLanguageModel, out_dir: str | Path, weights_dtype: str = "float32") -> dict[str, Any]:
    """Write prompt.onnx, step.onnx and weights.bin to out_dir, check them, return the interface description.

    `weights_dtype` float16 halves weights.bin: the weights are rounded to float16 (the parity checks compare the
    graphs with the rounded model) and computed in float32."""
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype must be one of {WEIGHTS_DTYPES}, got {weights_dtype!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    spec = interface(cfg)
    model = copy.deepcopy(model).cpu().eval()  # the caller's model keeps its device and mode
    half = weights_dtype == "float16"
    if half:
        round_to_half(model)
    ids, lengths = example_batch(cfg, [3, 7, 5], seed=0)
    prompt_axes = {"ids": {0: "B", 1: "T"}, "token_log_probs": {0: "B", 1: "T"}}
    _export(_PromptGraph(model), (ids, lengths), out_dir / "prompt.onnx", spec["prompt"]["inputs"],
            spec["prompt"]["outputs"], prompt_axes)
    with torch.no_grad():
        _, state = model(ids, lengths)
    tokens = torch.full((len(lengths),), BOS_ID, dtype=torch.long)
    step = spec["step"]
    _export(_StepGraph(model), (tokens, *(state[n] for n in cfg.state_names)), out_dir / "step.onnx",
            [n for n in step["inputs"] if n != TOP_K_INPUT], [n for n in step["outputs"] if n not in TOP_K_OUTPUTS],
            {})
    add_top_k(out_dir / "step.onnx")
    share_initializers([out_dir / "prompt.onnx", out_dir / "step.onnx"], half=half)
    check_graphs(model, out_dir)
    return spec
