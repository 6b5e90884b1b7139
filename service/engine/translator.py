"""The translator's text -> translation path over ONNX (shared by `seqserve evaluate` and the service)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.engine.decoding import Hypothesis, SearchFactory, Seq2SeqRunner, search_factory, translate_batch
from service.engine.sessions import SessionOptions, make_session
from service.engine.shortlist import Shortlist
from service.engine.shortlist import describe as shortlist_entry
from service.engine.text import TextEncoder, pad_batch


@dataclass(frozen=True)
class DecodeOptions:
    beam_size: int = 4
    length_penalty: float = 0.6
    max_len_a: float = 1.5
    max_len_b: float = 10.0
    max_tokens: int = 256  # a hard cap on generated tokens, whatever the source length
    num_hypotheses: int = 1  # the n best translations, n at most beam_size
    split_sentences: bool = True  # a text of several sentences is translated sentence by sentence
    shortlist: bool = True  # decode over the sentence's lexical shortlist when the model has one
    early_stopping: str = "bound"  # beam search's stopping rule (decoding.EARLY_STOPPING)

    def factory(self) -> SearchFactory:
        return search_factory(self.beam_size, self.length_penalty, self.max_len_a, self.max_len_b, self.max_tokens,
                              self.num_hypotheses, self.early_stopping)


@dataclass(frozen=True)
class Alternative:
    """One of the n best translations."""

    text: str
    score: float
    target_ids: list[int]


@dataclass
class Translation:
    """A text's translation. A text of several sentences has `sentences`: each sentence's own translation (with its
    tokens and attention) and where it lies in the text; the text-level fields join them."""

    text: str
    score: float
    attention: np.ndarray | None  # (target tokens, source tokens); None for several sentences
    target_ids: list[int]
    source_ids: list[int]
    encoders: tuple[TextEncoder, TextEncoder] = field(repr=False, compare=False)  # (source, target)
    alternatives: list[Alternative] = field(default_factory=list)  # the n best, this one first, when n > 1
    sentences: list[SentenceTranslation] | None = None

    @property
    def source_tokens(self) -> list[str]:
        """Readable source pieces (made on demand: most answers never show them)."""
        return self.encoders[0].tokens(self.source_ids)

    @property
    def target_tokens(self) -> list[str]:
        return self.encoders[1].tokens(self.target_ids)


@dataclass
class SentenceTranslation:
    start: int  # the sentence is text[start:end] (without the whitespace around it)
    end: int
    translation: Translation


# Languages written without spaces between sentences (or words): Chinese, Japanese, Thai, Lao, Khmer, Burmese.
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my"})


def sentence_gap(gap: str, target_language: str) -> str:
    """The whitespace between two translated sentences: the source's own, except that sentences of a source
    written without spaces get one in a spaced target language, and spaces (not line breaks) go in an unspaced one."""
    unspaced = target_language.split("_")[0].split("-")[0].lower() in UNSPACED_LANGUAGES
    if unspaced:
        return gap if "\n" in gap or "\r" in gap else ""
    return gap or " "


def join_sentences(text: str, spans: Sequence[tuple[int, int]], parts: Sequence[Translation],
                   target_language: str = "") -> Translation:
    """One translation for a text from its sentences' translations, put back between the text's own whitespace
    (what precedes the first sentence, lies between two (`sentence_gap`), and follows the last). The score is the
    sentences' mean; the i-th alternative joins every sentence's i-th (or, with fewer, its last) alternative."""
    def joined(pieces: Sequence[str]) -> str:
        out, cursor = [], 0
        for n, ((start, end), piece) in enumerate(zip(spans, pieces, strict=True)):
            gap = text[cursor:start]
            out += [sentence_gap(gap, target_language) if n else gap, piece]
            cursor = end
        return "".join([*out, text[cursor:]])

    n = max(len(p.alternatives) for p in parts)
    alternatives = []
    for i in range(n if n > 1 else 0):
        chosen = [p.alternatives[min(i, len(p.alternatives) - 1)] for p in parts]
        alternatives.append(Alternative(joined([a.text for a in chosen]), float(np.mean([a.score for a in chosen])),
                                        [t for a in chosen for t in a.target_ids]))
    return Translation(joined([p.text for p in parts]), float(np.mean([p.score for p in parts])), None,
                       [t for p in parts for t in p.target_ids], [t for p in parts for t in p.source_ids],
                       parts[0].encoders, alternatives,
                       [SentenceTranslation(s, e, p) for (s, e), p in zip(spans, parts, strict=True)])


class TranslatorRuntime:
    """Tokenize sources, decode with the shared searches, detokenize."""

    def __init__(self, version_dir: Path, config: dict[str, Any], opts: SessionOptions | None = None):
        self.config = config
        max_length = int(config["max_length"])
        scripts = config.get("scripts") or {}  # OpenCC conversions the model was trained with, by side
        self.source = TextEncoder.load(version_dir / config["tokenizers"]["source"], max_length, scripts.get("source"))
        self.target = TextEncoder.load(version_dir / config["tokenizers"]["target"], max_length, scripts.get("target"))
        self.source_eos = bool(config.get("source_eos", True))
        opts = opts or SessionOptions()
        entry = shortlist_entry(config)
        self.shortlist = None if entry is None else Shortlist.load(version_dir / entry["file"],
                                                                   self.target.vocab_size)
        self.runner = Seq2SeqRunner(make_session(version_dir / config["graphs"]["encoder"], opts),
                                    make_session(version_dir / config["graphs"]["decoder"], opts),
                                    shortlist_session=None if entry is None
                                    else make_session(version_dir / entry["graph"], opts))
        self.use_shortlist = self.shortlist is not None  # the model-level switch (the service's --no-shortlist)

    def shortlists(self, seqs: Sequence[Sequence[int]], options: DecodeOptions | Sequence[DecodeOptions],
                   ) -> list[np.ndarray | None] | None:
        """Each sentence's candidate target ids (None where it decodes over the whole vocabulary); None for none."""
        if self.shortlist is None or not self.use_shortlist:
            return None
        each = [options] * len(seqs) if isinstance(options, DecodeOptions) else list(options)
        out = [self.shortlist.for_sentence(s) if o.shortlist else None for s, o in zip(seqs, each, strict=True)]
        return out if any(s is not None for s in out) else None

    @property
    def provider(self) -> str:
        return str(self.runner.encoder.get_providers()[0])

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.source.ids(texts, add_eos=self.source_eos)

    def decode_ids(self, seqs: Sequence[Sequence[int]], factories: SearchFactory | Sequence[SearchFactory],
                   shortlists: Sequence[np.ndarray | None] | None = None) -> list[Hypothesis]:
        ids, lengths = pad_batch(seqs)
        return translate_batch(self.runner, ids, lengths, factories, shortlists)

    def finish(self, src_ids: Sequence[int], hyp: Hypothesis) -> Translation:
        alternatives = [Alternative(self.target.decode(h.tokens), float(h.score), list(h.tokens))
                        for h in hyp.alternatives]
        return Translation(self.target.decode(hyp.tokens), float(hyp.score), hyp.attention, list(hyp.tokens),
                           list(src_ids), (self.source, self.target), alternatives)

    def translate(self, texts: Sequence[str], options: DecodeOptions = DecodeOptions()) -> list[Translation]:
        seqs = self.encode(texts)
        hyps = self.decode_ids(seqs, options.factory(), self.shortlists(seqs, options))
        return [self.finish(s, h) for s, h in zip(seqs, hyps, strict=True)]

    def smoke_test(self) -> None:
        """One real translation, e.g. to check that quantized graphs still run."""
        self.translate(["a short check", "x"], DecodeOptions(beam_size=2))
