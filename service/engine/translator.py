"""The translator's text -> translation path over ONNX (shared by `seqserve evaluate` and the service)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.engine.decoding import Hypothesis, SearchFactory, Seq2SeqRunner, search_factory, translate_batch
from service.engine.sessions import SessionOptions, make_session
from service.engine.text import TextEncoder, pad_batch


@dataclass(frozen=True)
class DecodeOptions:
    beam_size: int = 4
    length_penalty: float = 0.6
    max_len_a: float = 1.5
    max_len_b: float = 10.0
    max_tokens: int = 256  # a hard cap on generated tokens, whatever the source length

    def factory(self) -> SearchFactory:
        return search_factory(self.beam_size, self.length_penalty, self.max_len_a, self.max_len_b, self.max_tokens)


@dataclass
class Translation:
    text: str
    score: float
    attention: np.ndarray | None  # (target tokens, source tokens)
    target_ids: list[int]
    source_ids: list[int]
    encoders: tuple[TextEncoder, TextEncoder] = field(repr=False, compare=False)  # (source, target)

    @property
    def source_tokens(self) -> list[str]:
        """Readable source pieces (made on demand: most answers never show them)."""
        return self.encoders[0].tokens(self.source_ids)

    @property
    def target_tokens(self) -> list[str]:
        return self.encoders[1].tokens(self.target_ids)


class TranslatorRuntime:
    """Tokenize sources, decode with the shared searches, detokenize."""

    def __init__(self, version_dir: Path, config: dict[str, Any], opts: SessionOptions | None = None):
        self.config = config
        max_length = int(config["max_length"])
        self.source = TextEncoder.load(version_dir / config["tokenizers"]["source"], max_length)
        self.target = TextEncoder.load(version_dir / config["tokenizers"]["target"], max_length)
        self.source_eos = bool(config.get("source_eos", True))
        self.runner = Seq2SeqRunner(make_session(version_dir / config["graphs"]["encoder"], opts or SessionOptions()),
                                    make_session(version_dir / config["graphs"]["decoder"], opts or SessionOptions()))

    @property
    def provider(self) -> str:
        return str(self.runner.encoder.get_providers()[0])

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.source.ids(texts, add_eos=self.source_eos)

    def decode_ids(self, seqs: Sequence[Sequence[int]],
                   factories: SearchFactory | Sequence[SearchFactory]) -> list[Hypothesis]:
        ids, lengths = pad_batch(seqs)
        return translate_batch(self.runner, ids, lengths, factories)

    def finish(self, src_ids: Sequence[int], hyp: Hypothesis) -> Translation:
        return Translation(self.target.decode(hyp.tokens), float(hyp.score), hyp.attention, list(hyp.tokens),
                           list(src_ids), (self.source, self.target))

    def translate(self, texts: Sequence[str], options: DecodeOptions = DecodeOptions()) -> list[Translation]:
        seqs = self.encode(texts)
        hyps = self.decode_ids(seqs, options.factory())
        return [self.finish(s, h) for s, h in zip(seqs, hyps, strict=True)]

    def smoke_test(self) -> None:
        """One real translation, e.g. to check that quantized graphs still run."""
        self.translate(["a short check", "x"], DecodeOptions(beam_size=2))
