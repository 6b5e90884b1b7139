"""A translator as served: its decoder steps on the iteration-level scheduler (`DecodingModel`), or whole batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.batching.seq2seq import DecodeEngine
from service.engine.sessions import SessionOptions
from service.engine.translator import DecodeOptions, Translation, TranslatorRuntime
from service.metrics import Metrics
from service.serving.served import WARMUP_TEXTS, DecodingModel, Output
from service.settings import Settings


@dataclass(frozen=True)
class TranslateItem:
    src_ids: list[int]
    options: DecodeOptions


class ServedTranslator(DecodingModel):
    kind = "translator"
    runtime: TranslatorRuntime

    def __init__(self, name: str, version_dir: Path, config: dict[str, Any], opts: SessionOptions) -> None:
        super().__init__(name, version_dir, config, opts)
        self.runtime = TranslatorRuntime(version_dir, config, opts)

    def engine(self, settings: Settings, metrics: Metrics) -> DecodeEngine:
        return DecodeEngine(self.runtime, settings.max_active_rows, metrics, self.name)

    def prepare(self, texts: Sequence[str], options: DecodeOptions) -> tuple[list[Any], list[int]]:
        """Tokenized here: admission budgets source tokens."""
        seqs = self.runtime.encode(texts)
        self.count_input_tokens(seqs)
        return [TranslateItem(s, options) for s in seqs], [len(s) for s in seqs]

    def run(self, items: list[TranslateItem]) -> list[Translation]:
        """Static batching: the whole batch decodes together."""
        hyps = self.runtime.decode_ids([i.src_ids for i in items], [i.options.factory() for i in items])
        return [self.runtime.finish(i.src_ids, h) for i, h in zip(items, hyps, strict=True)]

    def warm_up(self) -> None:
        items, _ = self.prepare(WARMUP_TEXTS, DecodeOptions(beam_size=2, max_tokens=8))
        self.run(items)

    def v2_outputs(self) -> list[Output]:
        return [Output("translation", "BYTES", [-1]), Output("score", "FP32", [-1])]

    def v2_tensors(self, results: Sequence[Any]) -> dict[str, tuple[list[Any], list[int]]]:
        n = len(results)
        return {"translation": ([r.text for r in results], [n]), "score": ([r.score for r in results], [n])}
