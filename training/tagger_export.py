"""Export the tagger to ONNX (dynamic batch and length axes) and check it against PyTorch."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from models.tagger import RNNTagger
from service.engine.text import TextEncoder, pad_batch
from training.classifier_export import PAD_INVARIANCE_TOL, PARITY_TOL, ExportError, sample_ids


def export_tagger(model: RNNTagger, path: Path, encoder: TextEncoder, texts: Sequence[str],
                  opset: int = 17) -> dict[str, Any]:
    """Write the graph and verify parity and pad invariance; returns the interface for config.json."""
    seqs = sample_ids(encoder, texts)
    ids, lengths = pad_batch(seqs)
    names = ["emissions", "intent_logits"] if model.intent is not None else ["emissions"]
    axes = {"ids": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "emissions": {0: "batch", 1: "time"},
            "intent_logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(ids), torch.from_numpy(lengths)), str(path),
                          input_names=["ids", "lengths"], output_names=names, opset_version=opset, dynamo=False,
                          dynamic_axes={k: v for k, v in axes.items() if k in ("ids", "lengths", *names)})
    check_tagger(model, path, seqs)
    outputs = [{"name": "emissions", "datatype": "FP32", "shape": [-1, -1, model.cfg.num_tags]}]
    if model.intent is not None:
        outputs.append({"name": "intent_logits", "datatype": "FP32", "shape": [-1, model.cfg.num_intents]})
    return {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
                       {"name": "lengths", "datatype": "INT64", "shape": [-1]}],
            "outputs": outputs}


def _run(session: ort.InferenceSession, seqs: list[list[int]]) -> list[np.ndarray]:
    ids, lengths = pad_batch(seqs)
    return [np.asarray(o) for o in session.run(None, {"ids": ids, "lengths": lengths})]


def check_tagger(model: RNNTagger, path: Path, seqs: list[list[int]]) -> None:
    """ONNX outputs match PyTorch (1e-4) on every real position; a text alone matches itself in a padded batch of
    longer texts (1e-5), and a batch longer than any export sample runs (the length axis stayed dynamic)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids, lengths = pad_batch(seqs)
    with torch.no_grad():
        expected = [o.numpy() for o in model(torch.from_numpy(ids), torch.from_numpy(lengths))]
    got = _run(session, seqs)
    valid = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    diffs = [float(np.abs(got[0] - expected[0])[valid].max())]
    if len(got) > 1:
        diffs.append(float(np.abs(got[1] - expected[1]).max()))
    if max(diffs) > PARITY_TOL:
        raise ExportError(f"ONNX outputs differ from PyTorch by {max(diffs):.2e} (> {PARITY_TOL})")
    shortest = min(seqs, key=len)
    longest = max(seqs, key=len)
    alone = _run(session, [shortest])
    in_batch = _run(session, [shortest, longest + longest])
    diff = float(np.abs(alone[0][0] - in_batch[0][0, :len(shortest)]).max())
    if len(alone) > 1:
        diff = max(diff, float(np.abs(alone[1][0] - in_batch[1][0]).max()))
    if diff > PAD_INVARIANCE_TOL:
        raise ExportError(f"a text alone and inside a padded batch differ by {diff:.2e} (> {PAD_INVARIANCE_TOL})")
