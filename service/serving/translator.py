"""A translator as served: its decoder steps on the iteration-level scheduler (`DecodingModel`), or whole batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.batching.seq2seq import DecodeEngine
from service.engine.segment import sentence_spans
from service.engine.sessions import SessionOptions
from service.engine.translator import DecodeOptions, Translation, TranslatorRuntime, join_sentences
from service.metrics import Metrics
from service.serving.inference import InvalidInput
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

    def languages(self) -> tuple[str, str]:
        """(source, target) language codes, for the sentence segmenter and the gaps between translated sentences:
        config.json's `languages`, else the recorded pair ("" where unknown)."""
        recorded = self.config.get("languages") or {}
        pair = str((self.config.get("provenance") or {}).get("settings", {}).get("pair") or "").split("-")
        pair = pair if len(pair) == 2 else ["", ""]
        return str(recorded.get("source") or pair[0]), str(recorded.get("target") or pair[1])

    def start(self, settings: Settings, metrics: Metrics) -> None:
        # before the engine is made: the continuous engine keeps candidate sets only for a shortlisted model
        self.runtime.use_shortlist = self.runtime.shortlist is not None and self.name not in settings.no_shortlist
        super().start(settings, metrics)
        self.max_sentences = settings.max_texts_per_request

    def segment(self, texts: Sequence[str], options: DecodeOptions) -> tuple[list[str], list[Any]]:
        """Each text of several sentences becomes its sentences (decoded together in the batch like any other
        texts); a text of one sentence is queued as it is."""
        units: list[str] = []
        plan: list[Any] = []
        language = self.languages()[0] or "en"
        for text in texts:
            spans = sentence_spans(text, language) if options.split_sentences else [(0, len(text))]
            if len(spans) == 1:
                units.append(text)
                plan.append(None)
            else:
                units += [text[start:end] for start, end in spans]
                plan.append(spans)
        if len(units) > getattr(self, "max_sentences", len(units)):
            raise InvalidInput(f"the texts split into {len(units)} sentences; max_texts_per_request="
                               f"{self.max_sentences} bounds the sentences of a request (send fewer texts, or "
                               "split_sentences false)")
        return units, plan

    def combine(self, texts: Sequence[str], answers: list[Any], plan: list[Any]) -> list[Translation]:
        out, cursor = [], 0
        for text, spans in zip(texts, plan, strict=True):
            if spans is None:
                out.append(answers[cursor])
                cursor += 1
            else:
                out.append(join_sentences(text, spans, answers[cursor: cursor + len(spans)], self.languages()[1]))
                cursor += len(spans)
        return out

    def engine(self, settings: Settings, metrics: Metrics) -> DecodeEngine:
        return DecodeEngine(self.runtime, settings.max_active_rows, metrics, self.name)

    def prepare(self, texts: Sequence[str], options: DecodeOptions) -> tuple[list[Any], list[int]]:
        """Tokenized here: admission budgets source tokens."""
        seqs = self.runtime.encode(texts)
        self.count_input_tokens(seqs)
        return [TranslateItem(s, options) for s in seqs], [len(s) for s in seqs]

    def run(self, items: list[TranslateItem]) -> list[Translation]:
        """Static batching: the whole batch decodes together."""
        seqs = [i.src_ids for i in items]
        hyps = self.runtime.decode_ids(seqs, [i.options.factory() for i in items],
                                       self.runtime.shortlists(seqs, [i.options for i in items]))
        return [self.runtime.finish(i.src_ids, h) for i, h in zip(items, hyps, strict=True)]

    def warm_up(self) -> None:
        items, _ = self.prepare(WARMUP_TEXTS, DecodeOptions(beam_size=2, max_tokens=8))
        self.run(items)

    def v2_outputs(self) -> list[Output]:
        return [Output("translation", "BYTES", [-1]), Output("score", "FP32", [-1]),
                Output("hypotheses", "BYTES", [-1, -1]), Output("hypothesis_scores", "FP32", [-1, -1])]

    def v2_output_names(self, options: DecodeOptions) -> list[str]:
        """The n best come with num_hypotheses above 1."""
        names = ["translation", "score"]
        return [*names, "hypotheses", "hypothesis_scores"] if options.num_hypotheses > 1 else names

    def v2_tensors(self, results: Sequence[Any]) -> dict[str, tuple[list[Any], list[int]]]:
        n = len(results)
        tensors = {"translation": ([r.text for r in results], [n]), "score": ([r.score for r in results], [n])}
        width = max(len(r.alternatives) for r in results) if results else 0
        if width:  # (texts, n): a text with fewer alternatives is padded with "" scored float32's lowest
            rows = [r.alternatives + [None] * (width - len(r.alternatives)) for r in results]
            tensors["hypotheses"] = ([a.text if a else "" for row in rows for a in row], [n, width])
            tensors["hypothesis_scores"] = ([a.score if a else float(np.finfo(np.float32).min)
                                             for row in rows for a in row], [n, width])
        return tensors
