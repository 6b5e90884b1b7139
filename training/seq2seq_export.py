"""Export a `Seq2Seq` as two ONNX graphs, `encoder.onnx` and a one-step `decoder.onnx`, and check parity.

The TorchScript exporter (`dynamo=False`) is used: `torch.export` cannot trace `pack_padded_sequence`.
All state tensors are batch-first so a runtime can select or repeat rows with `arr[idx]`.
The step graph ends in a TopK (`top_k` in; `top_log_probs`, `top_ids` out), so a search reads each
row's few best candidates instead of copying out and scanning (rows, vocabulary) log-probs, and its
output layer is a MatMul, which onnxruntime's dynamic int8 quantizer handles (it leaves Gemm in float).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.seq2seq import Seq2Seq, Seq2SeqConfig
from service.engine.decoding import TOP_K_INPUT, TOP_K_OUTPUTS
from service.engine.text import BOS_ID, EOS_ID, PAD_ID

OPSET = 17
PARITY_TOL = 1e-4


class ExportParityError(RuntimeError):
    """The exported graphs disagree with the torch model."""


class _EncoderGraph(nn.Module):
    """(src_ids, src_lengths) -> memory, keys (when attending), initial states.

    The baseline's step graph never reads memory, but the encoder graph still outputs it: the
    TorchScript exporter fails on a packed RNN whose output sequence is unused.
    """

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_ids: Tensor, src_lengths: Tensor) -> tuple[Tensor, ...]:
        memory, keys, _, state = self.model.encode(src_ids, src_lengths)
        attended = (keys,) if keys is not None else ()
        return (memory, *attended, *(state[name] for name in self.model.cfg.state_names))


class _StepGraph(nn.Module):
    """(tokens, memory, keys, src_mask, *states) -> log_probs, attention, *states_out."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, tokens: Tensor, memory: Tensor, keys: Tensor, src_mask: Tensor, *states: Tensor
    ) -> tuple:
        state = dict(zip(self.model.cfg.state_names, states, strict=True))
        logits, weights, new_state = self.model.decoder.step(tokens, state, memory, keys, src_mask)
        return F.log_softmax(logits, dim=1), weights, *(new_state[n] for n in self.model.cfg.state_names)


class _BaselineStepGraph(nn.Module):
    """(tokens, *states) -> log_probs, *states_out: no memory without attention."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, *states: Tensor) -> tuple:
        state = dict(zip(self.model.cfg.state_names, states, strict=True))
        logits, _, new_state = self.model.decoder.step(tokens, state, None, None, None)
        return F.log_softmax(logits, dim=1), *(new_state[n] for n in self.model.cfg.state_names)


class _MatMulLinear(nn.Module):
    """x W^T + b exported as MatMul and Add rather than Gemm; the weight is stored transposed (no Transpose node)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        y = torch.matmul(x, self.weight_t)
        return y + self.bias if self.bias is not None else y


def _linears_as_matmul(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, _MatMulLinear(child))
        else:
            _linears_as_matmul(child)


def add_top_k(path: Path) -> None:
    """Append each row's best candidates to a step graph: TopK(log_probs, top_k) -> top_log_probs, top_ids.

    ONNX TopK orders equal values by lower index, as argmax does, so searches choose as before.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    if any(i.name == TOP_K_INPUT for i in graph.input):
        return
    graph.input.append(helper.make_tensor_value_info(TOP_K_INPUT, TensorProto.INT64, [1]))
    graph.node.append(helper.make_node("TopK", ["log_probs", TOP_K_INPUT], list(TOP_K_OUTPUTS), name="top_k",
                                       axis=-1, largest=1, sorted=1))
    values, ids = TOP_K_OUTPUTS
    graph.output.extend([helper.make_tensor_value_info(values, TensorProto.FLOAT, ["B", "k"]),
                         helper.make_tensor_value_info(ids, TensorProto.INT64, ["B", "k"])])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def interface(cfg: Seq2SeqConfig) -> dict[str, Any]:
    """Graph files, input/output names and state names; goes into config.json under `graphs`."""
    states = cfg.state_names
    attended = cfg.attention != "none"
    memory_names = ["memory", "keys"] if attended else []
    return {
        "graphs": {"encoder": "encoder.onnx", "decoder": "decoder.onnx"},
        "encoder": {
            "file": "encoder.onnx",
            "inputs": ["src_ids", "src_lengths"],
            "outputs": ["memory", *(["keys"] if attended else []), *states],
        },
        "decoder": {
            "file": "decoder.onnx",
            "inputs": ["tokens", *memory_names, *(["src_mask"] if attended else []), *states, TOP_K_INPUT],
            "outputs": ["log_probs", *(["attention"] if attended else []), *(f"{n}_out" for n in states),
                        *TOP_K_OUTPUTS],
        },
        "states": states,
        "opset": OPSET,
        "special_ids": {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID},
    }


def _dynamic_axes(names: list[str]) -> dict[str, dict[int, str]]:
    by_name = {"src_ids": {0: "B", 1: "S"}, "memory": {0: "B", 1: "S"}, "keys": {0: "B", 1: "S"},
               "src_mask": {0: "B", 1: "S"}, "attention": {0: "B", 1: "S"}}
    return {n: by_name.get(n, {0: "B"}) for n in names}


def _example_batch(cfg: Seq2SeqConfig, lengths: list[int], seed: int) -> tuple[Tensor, Tensor]:
    """A random padded batch; lengths are deliberately unsorted."""
    gen = torch.Generator().manual_seed(seed)
    src_lengths = torch.tensor(lengths, dtype=torch.long)
    src_ids = torch.randint(EOS_ID + 1, cfg.src_vocab, (len(lengths), max(lengths)), generator=gen)
    padding = torch.arange(max(lengths))[None, :] >= src_lengths[:, None]  # (B, S)
    src_ids = src_ids.masked_fill(padding, PAD_ID)
    return src_ids, src_lengths


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str]) -> None:
    # A fresh wrapper is in train mode, and export restores that mode onto the wrapped model afterwards.
    module.eval()
    with warnings.catch_warnings():
        # The TorchScript exporter warns about PackPadded shape inference and tracer int conversions.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=inputs, output_names=outputs,
            dynamic_axes=_dynamic_axes(inputs + outputs), opset_version=OPSET, dynamo=False,
        )


@torch.no_grad()
def check_parity(model: Seq2Seq, out_dir: Path, steps: int = 3, seed: int = 1) -> float:
    """Max |log_probs| difference, ONNX vs torch, over a few steps of a random padded batch."""
    spec = interface(model.cfg)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # a few steps on a small batch; spinning worker threads only cost
    encoder, decoder = (
        ort.InferenceSession(str(out_dir / spec[g]["file"]), opts, providers=["CPUExecutionProvider"])
        for g in ("encoder", "decoder")
    )
    src_ids, src_lengths = _example_batch(model.cfg, [4, 9, 1, 6, 9], seed)
    memory, keys, src_mask, state = model.encode(src_ids, src_lengths)
    onnx_out = dict(zip(spec["encoder"]["outputs"], encoder.run(None, {
        "src_ids": src_ids.numpy(), "src_lengths": src_lengths.numpy()}), strict=True))
    feeds = {"memory": onnx_out.get("memory"), "keys": onnx_out.get("keys"), "src_mask": src_mask.numpy(),
             TOP_K_INPUT: np.array([3], dtype=np.int64)}
    onnx_states = {n: onnx_out[n] for n in spec["states"]}
    tokens = torch.full((src_ids.size(0),), BOS_ID, dtype=torch.long)
    worst = 0.0
    for _ in range(steps):
        logits, _, state = model.decoder.step(tokens, state, memory, keys, src_mask)
        step_in = {"tokens": tokens.numpy(), **feeds, **onnx_states}
        step_out = dict(zip(spec["decoder"]["outputs"], decoder.run(
            None, {n: step_in[n] for n in spec["decoder"]["inputs"]}), strict=True))
        expected = F.log_softmax(logits, dim=1).numpy()
        worst = max(worst, float(np.abs(step_out["log_probs"] - expected).max()),
                    float(np.abs(step_out["top_log_probs"] - np.sort(expected, axis=1)[:, ::-1][:, :3]).max()))
        onnx_states = {n: step_out[f"{n}_out"] for n in spec["states"]}
        tokens = logits.argmax(dim=1)
    return worst


def export_seq2seq(model: Seq2Seq, cfg: Seq2SeqConfig, out_dir: str | Path) -> dict[str, Any]:
    """Write encoder.onnx and decoder.onnx to out_dir, check parity, return the interface description."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = interface(cfg)
    # Every Linear of the exported copy becomes a MatMul (see _MatMulLinear) with its own weight: the output
    # layer's weight, when tied, would otherwise be one initializer shared by a Gather and a MatMul, which the
    # int8 quantizer mangles.
    model = copy.deepcopy(model).cpu().eval()  # the caller's model keeps its device and mode
    _linears_as_matmul(model)
    src_ids, src_lengths = _example_batch(cfg, [3, 7, 5], seed=0)
    _export(_EncoderGraph(model), (src_ids, src_lengths), out_dir / spec["encoder"]["file"],
            spec["encoder"]["inputs"], spec["encoder"]["outputs"])
    with torch.no_grad():
        memory, keys, src_mask, state = model.encode(src_ids, src_lengths)
    tokens = torch.full((src_ids.size(0),), BOS_ID, dtype=torch.long)
    states = tuple(state[n] for n in cfg.state_names)
    if cfg.attention == "none":
        step, args = _BaselineStepGraph(model), (tokens, *states)
    else:
        step, args = _StepGraph(model), (tokens, memory, keys, src_mask, *states)
    decoder = spec["decoder"]
    _export(step, args, out_dir / decoder["file"], [n for n in decoder["inputs"] if n != TOP_K_INPUT],
            [n for n in decoder["outputs"] if n not in TOP_K_OUTPUTS])
    add_top_k(out_dir / decoder["file"])
    worst = check_parity(model, out_dir)
    if not worst <= PARITY_TOL:
        raise ExportParityError(
            f"ONNX and torch step log-probs differ by {worst:.3g} (tolerance {PARITY_TOL})")
    return spec
