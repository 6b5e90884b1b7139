"""Lexical shortlists: the target tokens a sentence's translation may use, and the candidate set of a decoder step.

A translator version may ship `shortlist.npz` (learned by `seqserve shortlist`, see training/shortlist.py) and a
second step graph, `decoder_shortlist.onnx`, that takes the step's candidate ids and computes the output layer for
those columns only. A sentence's shortlist is the union of its source tokens' likely translations, the most frequent
target tokens and EOS (and, for a shared vocabulary, the source tokens themselves: names and numbers are copied).

A step serves rows of several sentences, so its candidate ids are the union of their shortlists, and a mask
(rows, candidates) keeps each row to its own sentence's list: log-probs are normalised over the row's own list,
whatever else shares the batch, so answers do not depend on the batch (the batch-invariance requirement).
A sentence decoded over the whole vocabulary (the shortlist turned off for its request) widens the union to every
id, and its mask row is all true.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.engine.text import EOS_ID

CANDIDATES_INPUT, CANDIDATE_MASK_INPUT = "candidates", "candidate_mask"  # the shortlist step graph's extra inputs
SHRINK_SHARE = 0.25  # a union rebuilds when this share of its ids no longer belongs to any member


@dataclass
class Shortlist:
    """Per source token, the likely target tokens (CSR rows); plus the tokens every sentence gets."""

    indptr: np.ndarray  # (source vocab + 1,) int64
    indices: np.ndarray  # (nnz,) int64 target ids
    always: np.ndarray  # (n,) int64: the most frequent target tokens and EOS, sorted
    copy_source: bool  # a shared vocabulary: each source token is a candidate itself
    target_vocab: int

    @classmethod
    def load(cls, path: Path, target_vocab: int) -> Shortlist:
        with np.load(path) as data:
            shortlist = cls(data["indptr"].astype(np.int64), data["indices"].astype(np.int64),
                            np.union1d(data["frequent"].astype(np.int64), [EOS_ID]),
                            bool(data["copy_source"]), target_vocab)
        if shortlist.indices.size and (shortlist.indices.max() >= target_vocab or shortlist.indices.min() < 0):
            raise ValueError(f"{path}: target ids outside the vocabulary of {target_vocab}")
        return shortlist

    def save(self, path: Path, frequent: np.ndarray) -> None:
        np.savez_compressed(path, indptr=self.indptr.astype(np.int32), indices=self.indices.astype(np.int32),
                            frequent=frequent.astype(np.int32), copy_source=np.array(self.copy_source))

    def for_sentence(self, src_ids: Sequence[int]) -> np.ndarray:
        """The sorted target ids one sentence's translation may use (EOS always among them)."""
        src = np.asarray(src_ids, dtype=np.int64)
        src = src[(src >= 0) & (src < len(self.indptr) - 1)]
        parts = [self.always, *(self.indices[self.indptr[s]: self.indptr[s + 1]] for s in np.unique(src))]
        if self.copy_source:
            parts.append(src[src < self.target_vocab])
        return np.unique(np.concatenate(parts))


class CandidateUnion:
    """The candidate ids of steps shared by several sentences, kept as sentences join and leave.

    Members are counted per id, so a join adds its ids and a leave takes them away without a rebuild from scratch:
    ids a joining sentence brings are appended to the union (each member's cached mask row grows with False), and
    the union is compacted (sorted again, the rows recomputed) only when a quarter of it no longer belongs to anyone.
    Appended ids leave the union unsorted; that changes nothing but the order of exactly equal log-probs.
    """

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.counts = np.zeros(vocab, dtype=np.int32)
        self.position = np.full(vocab, -1, dtype=np.int64)  # each id's column in the union, -1 when absent
        self.full = 0  # members decoding over every id
        self.members: dict[Hashable, np.ndarray | None] = {}
        self._ids: np.ndarray = np.zeros(0, dtype=np.int64)
        self._stale = 0  # ids in the union that no member has any more
        self._rows: dict[Hashable, np.ndarray] = {}
        self.rebuilds = 0  # how often the union was compacted or widened to every id
        self.version = 0  # changes whenever `ids` does (a step's mask is valid for one version)

    def __len__(self) -> int:
        return len(self.members)

    def add(self, key: Hashable, ids: np.ndarray | None) -> None:
        """A member with its ids, each once (None: the whole vocabulary)."""
        if key in self.members:
            raise KeyError(f"{key!r} is already a member")
        self.members[key] = ids
        if ids is None:
            self.full += 1
            if self.full == 1:
                self._reset()
            return
        new = self.counts[ids] == 0
        self.counts[ids] += 1
        if self.full or not new.any():
            return
        fresh = ids[new]
        absent = fresh[self.position[fresh] < 0]
        self._stale -= len(fresh) - len(absent)  # stale ids wanted again
        if absent.size:
            self.position[absent] = np.arange(len(self._ids), len(self._ids) + len(absent))
            self._ids = np.concatenate([self._ids, absent])
            self.version += 1

    def remove(self, key: Hashable) -> None:
        ids = self.members.pop(key)
        self._rows.pop(key, None)
        if ids is None:
            self.full -= 1
            if self.full == 0:
                self._reset()
            return
        self.counts[ids] -= 1
        if self.full:
            return
        self._stale += int((self.counts[ids] == 0).sum())
        if self._stale > SHRINK_SHARE * len(self._ids):
            self._reset()

    def _reset(self) -> None:
        self._ids = (np.arange(self.vocab, dtype=np.int64) if self.full
                     else np.flatnonzero(self.counts).astype(np.int64))
        self.position[:] = -1
        self.position[self._ids] = np.arange(len(self._ids))
        self._stale = 0
        self._rows.clear()
        self.rebuilds += 1
        self.version += 1

    @property
    def ids(self) -> np.ndarray:
        """The candidate ids of a step over every member (sorted after a compaction, new ones appended)."""
        return self._ids

    def row(self, key: Hashable) -> np.ndarray:
        """The member's mask over `ids`: True at its own ids."""
        row = self._rows.get(key)
        if row is not None and len(row) < len(self._ids):  # the union grew since: the new ids are not its own
            row = np.concatenate([row, np.zeros(len(self._ids) - len(row), dtype=bool)])
            self._rows[key] = row
        if row is None:
            ids = self.members[key]
            if ids is None:
                row = np.ones(len(self._ids), dtype=bool)
            else:
                row = np.zeros(len(self._ids), dtype=bool)
                row[self.position[ids]] = True
            self._rows[key] = row
        return row

    def mask(self, keys: Sequence[Hashable], repeats: Sequence[int] | np.ndarray) -> np.ndarray:
        """(sum(repeats), len(ids)) bool: each key's row, repeated for each of its decoder rows."""
        if not keys:
            return np.zeros((0, len(self._ids)), dtype=bool)
        return np.repeat(np.stack([self.row(k) for k in keys]), repeats, axis=0)


def describe(config: dict[str, Any]) -> dict[str, Any] | None:
    """config.json's `shortlist` entry, or None."""
    entry = config.get("shortlist")
    return entry if isinstance(entry, dict) and entry.get("file") and entry.get("graph") else None
