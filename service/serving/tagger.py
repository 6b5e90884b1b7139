"""A tagger as served: texts batched by the dynamic batcher, split into words and tokenized on its compute thread."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.engine.sessions import SessionOptions
from service.engine.tagger import TaggerRuntime
from service.engine.tags import split_words
from service.serving.served import WARMUP_TEXTS, OneShotModel, Output


class ServedTagger(OneShotModel):
    kind = "tagger"

    def __init__(self, name: str, version_dir: Path, config: dict[str, Any], opts: SessionOptions) -> None:
        super().__init__(name, version_dir, config, opts)
        self.runtime = TaggerRuntime(version_dir, config, opts)
        self.intents = self.runtime.intents

    def run(self, texts: list[str]) -> list[dict[str, Any]]:
        words = [split_words(t) for t in texts]
        encoded = self.runtime.encode([[w.text for w in ws] for ws in words])
        self.count_input_tokens([e.ids for e in encoded])
        tagged = self.runtime.run(encoded)
        return [self.runtime.describe(*row) for row in zip(texts, words, tagged, strict=True)]

    def warm_up(self) -> None:
        self.run(WARMUP_TEXTS)

    def v2_outputs(self) -> list[Output]:
        outputs = [Output("tags", "BYTES", [-1, -1]), Output("token_scores", "FP32", [-1, -1]),
                   Output("token_offsets", "INT64", [-1, -1, 2]), Output("entities", "BYTES", [-1])]
        if self.intents:
            outputs += [Output("intent", "BYTES", [-1]), Output("intent_score", "FP32", [-1]),
                        Output("intent_probabilities", "FP32", [-1, len(self.intents)])]
        return outputs

    def v2_tensors(self, results: Sequence[Any]) -> dict[str, tuple[list[Any], list[int]]]:
        """Per text and word (padded to the longest text with "", 0 and -1): tags, scores and character offsets;
        each text's entities as one JSON string; the intent, its score and every intent's probability."""
        n = len(results)
        width = max((len(r["tokens"]) for r in results), default=0)
        tags: list[Any] = []
        scores: list[Any] = []
        offsets: list[Any] = []
        for r in results:
            pad = width - len(r["tokens"])
            tags += [t["tag"] for t in r["tokens"]] + [""] * pad
            scores += [t["score"] for t in r["tokens"]] + [0.0] * pad
            offsets += [x for t in r["tokens"] for x in (t["start"], t["end"])] + [-1] * (2 * pad)
        tensors = {
            "tags": (tags, [n, width]),
            "token_scores": (scores, [n, width]),
            "token_offsets": (offsets, [n, width, 2]),
            "entities": ([json.dumps(r["entities"], ensure_ascii=False) for r in results], [n]),
        }
        if self.intents:
            tensors["intent"] = ([r["intent"]["label"] for r in results], [n])
            tensors["intent_score"] = ([r["intent"]["score"] for r in results], [n])
            tensors["intent_probabilities"] = ([r["intent"]["probabilities"][k] for r in results
                                                for k in self.intents], [n, len(self.intents)])
        return tensors
