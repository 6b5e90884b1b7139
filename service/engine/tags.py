"""Words, tag schemes and CRF decoding for sequence tagging, in numpy (torch-free: serving and evaluation).

- `split_words`: raw text -> words with their character offsets, in any script. Whitespace separates words;
  punctuation at either end of a chunk is a word of its own (a final "." stays on a short chunk or one with another
  dot, so "st." and "a.m." stay whole); Chinese, Japanese kana and full-width forms are one word per character.
- `entities`: a tag sequence in BIO, BIOES or BILOU -> (label, first word, end word) spans, read leniently as
  conlleval does (an I- tag after O or after another label opens an entity).
- `viterbi` and `marginals`: a linear-chain CRF's best path and each position's tag probabilities.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_CHUNK = re.compile(r"\S+")
# One word per character: CJK ideographs (and their extensions and compatibility forms), kana, CJK punctuation
# and full-width forms; these scripts do not put spaces between words.
_PER_CHARACTER = re.compile("[\u3000-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
                            "\U00020000-\U0002fa1f]")
OUTSIDE = "O"


@dataclass(frozen=True)
class Word:
    text: str
    start: int  # character offsets into the text: text[start:end] == word
    end: int


def split_words(text: str) -> list[Word]:
    """The words of a raw text, each with the exact characters it covers."""
    words: list[Word] = []
    for chunk in _CHUNK.finditer(text):
        run_start = chunk.start()
        for m in _PER_CHARACTER.finditer(chunk.group()):
            at = chunk.start() + m.start()
            words.extend(_peel(text, run_start, at))
            words.append(Word(m.group(), at, at + 1))
            run_start = at + 1
        words.extend(_peel(text, run_start, chunk.end()))
    return words


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def _peel(text: str, start: int, end: int) -> list[Word]:
    """A run without spaces, with its leading and trailing punctuation split off as words of their own."""
    if start >= end:
        return []
    lead, trail = [], []
    while end - start > 1 and _is_punct(text[start]):
        lead.append(Word(text[start], start, start + 1))
        start += 1
    while end - start > 1 and _is_punct(text[end - 1]):
        rest = text[start:end - 1]
        if text[end - 1] == "." and (len(rest) <= 3 or "." in rest):
            break  # an abbreviation: st. a.m. etc.
        trail.append(Word(text[end - 1], end - 1, end))
        end -= 1
    return [*lead, Word(text[start:end], start, end), *trail[::-1]]


def split_tag(tag: str) -> tuple[str, str]:
    """("B", "city") for "B-city"; ("O", "") for O; a tag without a known prefix is its own label, "I" inside."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, sep, label = tag.partition("-")
    if sep and prefix in ("B", "I", "E", "S", "L", "U"):
        return {"L": "E", "U": "S"}.get(prefix, prefix), label
    return "I", tag


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(label, first word, end word exclusive) for each entity in the tag sequence."""
    spans: list[tuple[str, int, int]] = []
    label, begin = "", -1

    def close(end: int) -> None:
        nonlocal label, begin
        if begin >= 0:
            spans.append((label, begin, end))
        label, begin = "", -1

    for i, tag in enumerate(tags):
        prefix, name = split_tag(tag)
        if prefix == OUTSIDE:
            close(i)
        elif prefix in ("B", "S") or name != label or begin < 0:
            close(i)
            label, begin = name, i
        if prefix in ("E", "S"):
            close(i + 1)
    close(len(tags))
    return spans


def repair_bio(tags: list[str]) -> tuple[list[str], int]:
    """An I- tag that opens an entity (after O or another label) becomes B-; returns the tags and how many changed."""
    fixed, changed, previous = [], 0, ""
    for tag in tags:
        prefix, name = split_tag(tag)
        if prefix == "I" and tag.startswith("I-") and previous != name:
            tag, changed = "B-" + name, changed + 1
        fixed.append(tag)
        previous = "" if prefix in (OUTSIDE, "E", "S") else name
    return fixed, changed


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return np.asarray(np.squeeze(top, axis) + np.log(np.exp(x - top).sum(axis=axis)))


@dataclass(frozen=True)
class Crf:
    """A linear-chain CRF's scores: start (K,), transitions (K from, K to), end (K,). Decoding runs on a whole batch
    at once (rows padded past their lengths), one numpy step per word position."""

    start: np.ndarray
    transitions: np.ndarray
    end: np.ndarray

    def viterbi_batch(self, emissions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The best tag sequence of each row (B, W) for word emissions (B, W, K); past a row's length: 0."""
        batch, words, tags = emissions.shape
        rows = np.arange(batch)
        into = np.ascontiguousarray(self.transitions.T)  # (K to, K from): each step reduces the last, contiguous axis
        score = self.start + emissions[:, 0]  # (B, K)
        back = np.zeros((batch, words, tags), dtype=np.int64)
        for w in range(1, words):
            active = np.flatnonzero(w < lengths)  # rows that still have a word here
            cand = score[active, None, :] + into[None]  # (A, K to, K from)
            back[active, w] = best_from = cand.argmax(axis=2)
            best = np.take_along_axis(cand, best_from[..., None], axis=2)[..., 0]
            score[active] = best + emissions[active, w]
        paths = np.zeros((batch, words), dtype=np.int64)
        tag = (score + self.end).argmax(axis=1)  # (B,) the last real word's tag
        for w in range(words - 1, -1, -1):
            here = w < lengths  # rows whose path has reached w (walking back from their last word)
            paths[:, w] = np.where(here, tag, 0)
            if w > 0:
                tag = np.where(here, back[rows, w, tag], tag)
        return paths

    def marginals_batch(self, emissions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """P(tag at word w) under the CRF (B, W, K) by forward-backward; rows past their length: 0.

        The recursions run in probability space, rescaled at every word, so each step is one matrix product; the
        log-space version is the fallback for scores so far apart that a rescaled step underflows."""
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            probs = self._scaled_marginals(emissions, lengths)
        if not np.isfinite(probs).all():
            probs = self._log_marginals(emissions, lengths)
        valid = (np.arange(emissions.shape[1])[None, :] < lengths[:, None])[..., None]
        return np.where(valid, probs, 0.0)

    def _scaled_marginals(self, emissions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        batch, words, _ = emissions.shape
        step = np.exp(self.transitions - self.transitions.max())  # (K from, K to)
        emit = np.exp(emissions - emissions.max(axis=2, keepdims=True))  # (B, W, K), each word rescaled
        end = np.exp(self.end - self.end.max())
        alpha = np.empty_like(emit)
        beta = np.empty_like(emit)
        a = np.exp(self.start - self.start.max()) * emit[:, 0]
        alpha[:, 0] = a = a / a.sum(axis=1, keepdims=True)
        for w in range(1, words):
            a = (a @ step) * emit[:, w]
            alpha[:, w] = a = a / a.sum(axis=1, keepdims=True)
        last = (lengths - 1)[:, None]  # (B, 1)
        beta[:, words - 1] = b = np.broadcast_to(end, (batch, len(end)))
        for w in range(words - 2, -1, -1):
            b = (emit[:, w + 1] * b) @ step.T
            b = np.where(w == last, end, b / b.sum(axis=1, keepdims=True))
            beta[:, w] = b
        joint = alpha * beta
        return np.asarray(joint / joint.sum(axis=2, keepdims=True))

    def _log_marginals(self, emissions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        batch, words, _ = emissions.shape
        alpha = np.empty_like(emissions)
        beta = np.zeros_like(emissions)
        alpha[:, 0] = self.start + emissions[:, 0]
        for w in range(1, words):
            alpha[:, w] = _logsumexp(alpha[:, w - 1][:, :, None] + self.transitions[None], axis=1) + emissions[:, w]
        last = (lengths - 1)[:, None]  # (B, 1)
        beta[:, words - 1] = self.end
        for w in range(words - 2, -1, -1):
            step = _logsumexp(self.transitions[None] + (emissions[:, w + 1] + beta[:, w + 1])[:, None, :], axis=2)
            beta[:, w] = np.where(w == last, self.end, step)
        rows = np.arange(batch)
        log_z = _logsumexp(alpha[rows, lengths - 1] + self.end, axis=1)  # (B,)
        return np.asarray(np.exp(np.minimum(alpha + beta - log_z[:, None, None], 0.0)))

    def viterbi(self, emissions: np.ndarray) -> list[int]:
        """The best tag sequence for one text's word emissions (W, K), W >= 1."""
        return [int(t) for t in self.viterbi_batch(emissions[None], np.array([len(emissions)]))[0]]

    def marginals(self, emissions: np.ndarray) -> np.ndarray:
        """P(tag at word w) for one text's word emissions (W, K)."""
        return np.asarray(self.marginals_batch(emissions[None], np.array([len(emissions)]))[0])
