"""The classifier's text -> probabilities path over ONNX (shared by `seqserve evaluate` and the service)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.engine.sessions import SessionOptions, make_session, softmax
from service.engine.text import TextEncoder, pad_batch


class ClassifierRuntime:
    """Tokenize, pad, run the ONNX classifier, softmax."""

    def __init__(self, version_dir: Path, config: dict[str, Any], opts: SessionOptions | None = None):
        self.config = config
        self.labels: list[str] = list(config["labels"])
        self.encoder = TextEncoder.load(version_dir / config["tokenizers"]["source"], int(config["max_length"]))
        self.session = make_session(version_dir / config["graphs"]["model"], opts or SessionOptions())

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.encoder.ids(texts)

    def run_ids(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """Class probabilities (B, C) for already-encoded texts."""
        ids, lengths = pad_batch(seqs)
        (logits,) = self.session.run(["logits"], {"ids": ids, "lengths": lengths})
        return softmax(np.asarray(logits, dtype=np.float64))

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.run_ids(self.encode(texts))

    def smoke_test(self) -> None:
        """One real inference, e.g. to check that quantized graphs still run."""
        self.predict(["a short check", "x"])
