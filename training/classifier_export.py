"""Export the classifier to ONNX (dynamic batch and sequence axes) and check it against PyTorch."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from service.engine.text import TextEncoder, pad_batch

PARITY_TOL = 1e-4
PAD_INVARIANCE_TOL = 1e-5


class ExportError(RuntimeError):
    """The exported graph does not behave like the PyTorch model."""


def export_classifier(model: nn.Module, path: Path, seqs: list[list[int]], opset: int = 17) -> dict[str, Any]:
    """Write the graph and verify parity and pad invariance; returns the interface for config.json."""
    ids, lengths = pad_batch(seqs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.from_numpy(ids), torch.from_numpy(lengths)), str(path),
            input_names=["ids", "lengths"], output_names=["logits"], opset_version=opset, dynamo=False,
            dynamic_axes={"ids": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "logits": {0: "batch"}},
        )
    check_classifier(model, path, seqs)
    classes = model.out.out_features  # type: ignore[union-attr]
    return {
        "inputs": [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
                   {"name": "lengths", "datatype": "INT64", "shape": [-1]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, int(classes)]}],
    }


def check_classifier(model: nn.Module, path: Path, seqs: list[list[int]]) -> None:
    """ONNX logits match PyTorch (1e-4); a text alone matches itself in a padded batch of longer texts (1e-5)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids, lengths = pad_batch(seqs)
    with torch.no_grad():
        expected = model(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()
    (got,) = session.run(["logits"], {"ids": ids, "lengths": lengths})
    diff = float(np.abs(got - expected).max())
    if diff > PARITY_TOL:
        raise ExportError(f"ONNX logits differ from PyTorch by {diff:.2e} (> {PARITY_TOL})")
    shortest = int(np.argmin(lengths))
    alone_ids, alone_len = pad_batch([seqs[shortest]])
    (alone,) = session.run(["logits"], {"ids": alone_ids, "lengths": alone_len})
    longest = max(seqs, key=len)
    batch_ids, batch_len = pad_batch([seqs[shortest], longest + longest[:8]])
    (in_batch,) = session.run(["logits"], {"ids": batch_ids, "lengths": batch_len})
    diff = float(np.abs(alone[0] - in_batch[0]).max())
    if diff > PAD_INVARIANCE_TOL:
        raise ExportError(f"a text alone and inside a padded batch differ by {diff:.2e} (> {PAD_INVARIANCE_TOL})")


def sample_ids(encoder: TextEncoder, texts: Sequence[str], seed: int = 0) -> list[list[int]]:
    """Encoded sample texts plus random id sequences of varied lengths, for the export checks."""
    rng = np.random.default_rng(seed)
    random_seqs = [rng.integers(4, encoder.vocab_size, size=n).tolist() for n in (1, 3, 17, 40, 9)]
    return encoder.ids(list(texts)[:59]) + random_seqs if texts else random_seqs
