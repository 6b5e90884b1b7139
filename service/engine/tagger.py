"""The tagger's words -> tags, entities and intent path over ONNX (shared by `seqserve evaluate` and the service).

The graph reads subword pieces; each word's tag is read off its first piece. Words come from the caller (gold
words in evaluation) or from `tags.split_words` (raw text in the service), so offsets are exact in any script.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.engine.sessions import SessionOptions, make_session, softmax
from service.engine.tags import OUTSIDE, Crf, Word, entities, split_words
from service.engine.text import TextEncoder, pad_batch


@dataclass
class Encoded:
    """A text's pieces and, per word, the position of its first piece (words past max_length are cut)."""

    ids: list[int]
    first: list[int]


@dataclass
class Tagged:
    tags: list[str]  # one per kept word
    scores: list[float]  # the probability of each tag (a CRF's marginal)
    intent: str | None = None
    intent_score: float = 0.0
    intent_probs: np.ndarray | None = None


class TaggerRuntime:
    """Tokenize words, run the ONNX tagger, decode tags (Viterbi in numpy with a CRF, else argmax) and the intent."""

    def __init__(self, version_dir: Path, config: dict[str, Any], opts: SessionOptions | None = None):
        self.config = config
        self.tags: list[str] = list(config["tags"])
        self.intents: list[str] = list(config.get("intents") or [])
        self.encoder = TextEncoder.load(version_dir / config["tokenizers"]["source"], int(config["max_length"]))
        self.session = make_session(version_dir / config["graphs"]["model"], opts or SessionOptions())
        self.crf: Crf | None = None
        crf_file = (config.get("files") or {}).get("crf")
        if crf_file:
            with np.load(version_dir / crf_file) as arrays:
                self.crf = Crf(*(np.asarray(arrays[k], dtype=np.float64) for k in ("start", "transitions", "end")))
        self.outputs = ["emissions", "intent_logits"] if self.intents else ["emissions"]

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def encode(self, words: Sequence[Sequence[str]]) -> list[Encoded]:
        """Pieces of each text's words, at most max_length of them; a word that starts past the end is cut."""
        out = []
        encodings = self.encoder.tokenizer.encode_batch([list(w) for w in words], is_pretokenized=True,
                                                        add_special_tokens=False)
        for enc, text_words in zip(encodings, words, strict=True):
            ids = enc.ids[:self.encoder.max_length]
            first: list[int] = []
            for pos, word in enumerate(enc.word_ids[:len(ids)]):
                if word is not None and word == len(first):
                    first.append(pos)
                elif word is not None and word > len(first):  # words with no piece (normalized away)
                    first.extend([-1] * (word - len(first)) + [pos])
            if len(enc.ids) <= self.encoder.max_length:  # nothing cut: trailing words without pieces are kept
                first.extend([-1] * (len(text_words) - len(first)))
            out.append(Encoded(ids or [0], first))
        return out

    def run(self, batch: Sequence[Encoded]) -> list[Tagged]:
        ids, lengths = pad_batch([e.ids for e in batch])
        outputs = self.session.run(self.outputs, {"ids": ids, "lengths": lengths})
        paths, probs = self._decode(np.asarray(outputs[0], dtype=np.float64), batch)
        intent_probs = softmax(np.asarray(outputs[1], dtype=np.float64)) if self.intents else None
        results = []
        for row, enc in enumerate(batch):
            placed = iter(range(len(enc.first)))
            tags, scores = [], []
            for position in enc.first:  # a word without a piece of its own is outside every entity
                w = next(placed) if position >= 0 else -1
                tags.append(self.tags[paths[row, w]] if w >= 0 else OUTSIDE)
                scores.append(float(probs[row, w, paths[row, w]]) if w >= 0 else 1.0)
            tagged = Tagged(tags, scores)
            if intent_probs is not None:
                best = int(intent_probs[row].argmax())
                tagged.intent, tagged.intent_score = self.intents[best], float(intent_probs[row, best])
                tagged.intent_probs = intent_probs[row]
            results.append(tagged)
        return results

    def _decode(self, emissions: np.ndarray, batch: Sequence[Encoded]) -> tuple[np.ndarray, np.ndarray]:
        """Best tags (B, W) and each word's tag probabilities (B, W, K), for the words with a first piece, in order:
        Viterbi and marginals with a CRF, else each word's softmax."""
        placed = [[p for p in e.first if p >= 0] or [0] for e in batch]
        counts = np.array([len(p) for p in placed])
        index = np.zeros((len(batch), int(counts.max(initial=1))), dtype=np.int64)
        for row, positions in enumerate(placed):
            index[row, :len(positions)] = positions
        words = np.take_along_axis(emissions, index[..., None], axis=1)  # (B, W, K)
        if self.crf is None:
            probs = softmax(words)
            return probs.argmax(axis=2), probs
        return self.crf.viterbi_batch(words, counts), self.crf.marginals_batch(words, counts)

    def tag_words(self, words: Sequence[Sequence[str]]) -> list[Tagged]:
        return self.run(self.encode(words))

    def tag_texts(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Per text: its words with offsets, tags and scores, its entities, its intent, and where it was cut."""
        split = [split_words(t) for t in texts]
        tagged = self.run(self.encode([[w.text for w in ws] for ws in split]))
        return [self.describe(text, ws, t) for text, ws, t in zip(texts, split, tagged, strict=True)]

    def describe(self, text: str, words: list[Word], tagged: Tagged) -> dict[str, Any]:
        kept = words[:len(tagged.tags)]
        tokens = [{"text": w.text, "start": w.start, "end": w.end, "tag": tag, "score": score}
                  for w, tag, score in zip(kept, tagged.tags, tagged.scores, strict=True)]
        found = [{"label": label, "start": kept[a].start, "end": kept[b - 1].end,
                  "text": text[kept[a].start:kept[b - 1].end], "score": float(np.mean(tagged.scores[a:b]))}
                 for label, a, b in entities(tagged.tags)]
        result: dict[str, Any] = {"tokens": tokens, "entities": found,
                                  "truncated_at": words[len(kept)].start if len(kept) < len(words) else None}
        if tagged.intent_probs is not None:
            result["intent"] = {"label": tagged.intent, "score": tagged.intent_score,
                                "probabilities": {k: float(p) for k, p in
                                                  zip(self.intents, tagged.intent_probs, strict=True)}}
        return result

    def smoke_test(self) -> None:
        """One real inference, e.g. to check that quantized graphs still run."""
        self.tag_texts(["a short check", "x"])
