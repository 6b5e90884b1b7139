"""Export a `Seq2Seq` as two ONNX graphs, `encoder.onnx` and a one-step `decoder.onnx`, and check parity.

The TorchScript exporter (`dynamo=False`) is used: `torch.export` cannot trace `pack_padded_sequence`.
All state tensors are batch-first so a runtime can select or repeat rows with `arr[idx]`.
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
from service.text import BOS_ID, EOS_ID, PAD_ID

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
            "inputs": ["tokens", *memory_names, *(["src_mask"] if attended else []), *states],
            "outputs": ["log_probs", *(["attention"] if attended else []), *(f"{n}_out" for n in states)],
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
    feeds = {"memory": onnx_out.get("memory"), "keys": onnx_out.get("keys"), "src_mask": src_mask.numpy()}
    onnx_states = {n: onnx_out[n] for n in spec["states"]}
    tokens = torch.full((src_ids.size(0),), BOS_ID, dtype=torch.long)
    worst = 0.0
    for _ in range(steps):
        logits, _, state = model.decoder.step(tokens, state, memory, keys, src_mask)
        step_in = {"tokens": tokens.numpy(), **feeds, **onnx_states}
        step_out = dict(zip(spec["decoder"]["outputs"], decoder.run(
            None, {n: step_in[n] for n in spec["decoder"]["inputs"]}), strict=True))
        worst = max(worst, float(np.abs(step_out["log_probs"] - F.log_softmax(logits, dim=1).numpy()).max()))
        onnx_states = {n: step_out[f"{n}_out"] for n in spec["states"]}
        tokens = logits.argmax(dim=1)
    return worst


def export_seq2seq(model: Seq2Seq, cfg: Seq2SeqConfig, out_dir: str | Path) -> dict[str, Any]:
    """Write encoder.onnx and decoder.onnx to out_dir, check parity, return the interface description."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = interface(cfg)
    caller, was_training = model, model.training
    model = model.cpu().eval()
    if model.decoder.out.weight is model.decoder.embedding.weight:
        # Tied weights would become one initializer shared by a Gather and a MatMul, which onnxruntime's int8
        # quantizer mangles; the exported graph gets its own copy of the output layer instead.
        model = copy.deepcopy(model)
        model.decoder.out.weight = nn.Parameter(model.decoder.embedding.weight.detach().clone())
    try:
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
        _export(step, args, out_dir / decoder["file"], decoder["inputs"], decoder["outputs"])
        worst = check_parity(model, out_dir)
    finally:
        caller.train(was_training)
    if not worst <= PARITY_TOL:
        raise ExportParityError(
            f"ONNX and torch step log-probs differ by {worst:.3g} (tolerance {PARITY_TOL})")
    return spec
