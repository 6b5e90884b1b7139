"""A classifier as served: texts batched by the dynamic batcher, tokenized on its compute thread."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.engine.classifier import ClassifierRuntime
from service.engine.sessions import SessionOptions
from service.serving.served import WARMUP_TEXTS, OneShotModel, Output


class ServedClassifier(OneShotModel):
    kind = "classifier"

    def __init__(self, name: str, version_dir: Path, config: dict[str, Any], opts: SessionOptions) -> None:
        super().__init__(name, version_dir, config, opts)
        self.runtime = ClassifierRuntime(version_dir, config, opts)
        self.labels = self.runtime.labels

    def run(self, texts: list[str]) -> list[dict[str, Any]]:
        seqs = self.runtime.encode(texts)
        self.count_input_tokens(seqs)
        probs = self.runtime.run_ids(seqs)
        return [self.result(p) for p in probs]

    def result(self, probs: np.ndarray) -> dict[str, Any]:
        best = int(probs.argmax())
        return {"label": self.labels[best], "score": float(probs[best]),
                "probabilities": {label: float(p) for label, p in zip(self.labels, probs, strict=True)}}

    def warm_up(self) -> None:
        self.run(WARMUP_TEXTS)

    def v2_outputs(self) -> list[Output]:
        return [Output("label", "BYTES", [-1]), Output("score", "FP32", [-1]),
                Output("probabilities", "FP32", [-1, len(self.labels)])]

    def v2_tensors(self, results: Sequence[Any]) -> dict[str, tuple[list[Any], list[int]]]:
        n = len(results)
        return {
            "label": ([r["label"] for r in results], [n]),
            "score": ([r["score"] for r in results], [n]),
            "probabilities": ([r["probabilities"][label] for r in results for label in self.labels],
                              [n, len(self.labels)]),
        }
