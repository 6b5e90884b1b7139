"""Seq2seq decoding over ONNX Runtime: a generic graph runner and per-request search state machines.

A search is pure numpy: each step it says how many decoder rows it needs and which tokens they
feed, then `advance` consumes those rows' log-probs and returns, for every row of the next step,
the index of the row it continues from. That contract lets one decoder call serve rows of many
requests (here `translate_batch`; later a continuous-batching scheduler).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.text import BOS_ID, EOS_ID

SENTENCE_INPUTS = ("memory", "keys", "src_mask")  # per-sentence step inputs, shared by a sentence's rows
MEMORY_OUTPUTS = ("memory", "keys")  # encoder outputs that are not decoder state


@dataclass
class EncoderOutput:
    memory: np.ndarray  # (B, S, M)
    keys: np.ndarray | None  # (B, S, K); None without attention
    src_mask: np.ndarray  # (B, S) bool, True at real tokens
    states: dict[str, np.ndarray]  # initial decoder state, each (B, ...)

    def select(self, rows: np.ndarray) -> EncoderOutput:
        """The given rows (repeats allowed), e.g. a sentence's encoding once per beam."""
        return EncoderOutput(
            self.memory[rows], None if self.keys is None else self.keys[rows], self.src_mask[rows],
            {name: s[rows] for name, s in self.states.items()},
        )


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids without BOS/EOS
    score: float  # log_prob / length_penalty(length)
    log_prob: float  # sum of the log-probs of the tokens and, if finished, the EOS
    attention: np.ndarray | None  # (len(tokens), S) weights over the sentence's real source positions
    finished: bool  # ended with EOS rather than at max_len


class Seq2SeqRunner:
    """Runs encoder.onnx and the one-step decoder.onnx; learns the state names from the graphs."""

    def __init__(self, encoder_session: Any, decoder_session: Any) -> None:
        self.encoder = encoder_session
        self.decoder = decoder_session
        enc_outputs = [o.name for o in encoder_session.get_outputs()]
        self.state_names = [n for n in enc_outputs if n not in MEMORY_OUTPUTS]
        self.step_inputs = [i.name for i in decoder_session.get_inputs()]
        step_states = [n for n in self.step_inputs if n != "tokens" and n not in SENTENCE_INPUTS]
        if "memory" not in enc_outputs or "tokens" not in self.step_inputs:
            raise ValueError("encoder graph must output 'memory' and decoder graph must take 'tokens'")
        if sorted(step_states) != sorted(self.state_names):
            raise ValueError(f"encoder states {self.state_names} do not match decoder states {step_states}")
        step_outputs = {o.name for o in decoder_session.get_outputs()}
        missing = {"log_probs", *(f"{n}_out" for n in self.state_names)} - step_outputs
        if missing:
            raise ValueError(f"decoder graph lacks outputs {sorted(missing)}")
        self.attends = "attention" in step_outputs

    def encode(self, src_ids: np.ndarray, src_lengths: np.ndarray) -> EncoderOutput:
        """src_ids (B, S) int64 padded, src_lengths (B,) int64 -> memory, keys, mask, initial states."""
        src_ids = np.asarray(src_ids, dtype=np.int64)
        src_lengths = np.asarray(src_lengths, dtype=np.int64)
        if src_ids.shape[0] == 0:  # onnxruntime crashes (not raises) on an empty packed batch
            raise ValueError("cannot encode an empty batch")
        if src_lengths.min() < 1 or src_lengths.max() > src_ids.shape[1]:
            raise ValueError("every source length must be between 1 and the padded width")
        names = [o.name for o in self.encoder.get_outputs()]
        arrays = self.encoder.run(None, {"src_ids": src_ids, "src_lengths": src_lengths})
        out = dict(zip(names, arrays, strict=True))
        src_mask = np.arange(src_ids.shape[1])[None, :] < src_lengths[:, None]  # (B, S)
        return EncoderOutput(out["memory"], out.get("keys"), src_mask, {n: out[n] for n in self.state_names})

    def step(
        self, tokens: np.ndarray, memory: np.ndarray | None, keys: np.ndarray | None,
        src_mask: np.ndarray | None, states: dict[str, np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """One decoder step for R rows -> log_probs (R, V), attention (R, S) or None, next states."""
        available = {"tokens": np.asarray(tokens, dtype=np.int64), "memory": memory, "keys": keys,
                     "src_mask": src_mask, **states}
        feeds = {name: available[name] for name in self.step_inputs}
        names = [o.name for o in self.decoder.get_outputs()]
        out = dict(zip(names, self.decoder.run(None, feeds), strict=True))
        return out["log_probs"], out.get("attention"), {n: out[f"{n}_out"] for n in self.state_names}


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + length) / 6) ** alpha; alpha = 0 scores by the plain sum."""
    return float(((5.0 + length) / 6.0) ** alpha)


def max_output_length(src_len: int, a: float = 1.5, b: float = 10.0) -> int:
    """The most decoder steps (the EOS included) allowed for a source of src_len tokens."""
    return max(1, math.ceil(a * src_len + b))


class Search(Protocol):
    """One request's search; see the module docstring for the step contract."""

    done: bool

    @property
    def rows(self) -> int: ...

    def tokens(self) -> np.ndarray: ...

    def advance(self, log_probs: np.ndarray, attention: np.ndarray | None) -> np.ndarray: ...

    def certain(self) -> list[int]:
        """The tokens every possible final answer starts with (what a stream may send already)."""
        ...

    def result(self) -> Hypothesis: ...


def _stack(attention: list[np.ndarray], width: int | None) -> np.ndarray | None:
    """(T, S) attention rows; None for a graph without attention."""
    if width is None:
        return None
    return np.stack(attention) if attention else np.zeros((0, width), dtype=np.float32)


class GreedySearch:
    """Argmax at each step; one row until EOS or max_len steps."""

    def __init__(self, max_len: int, length_penalty: float = 0.0) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        self.max_len = max_len
        self.alpha = length_penalty
        self.done = False
        self._tokens: list[int] = []
        self._attention: list[np.ndarray] = []
        self._log_prob = 0.0
        self._finished = False
        self._width: int | None = None  # source width of the attention rows, None without attention

    @property
    def rows(self) -> int:
        return 0 if self.done else 1

    def tokens(self) -> np.ndarray:
        return np.array([self._tokens[-1] if self._tokens else BOS_ID], dtype=np.int64)

    def advance(self, log_probs: np.ndarray, attention: np.ndarray | None) -> np.ndarray:
        y = int(np.argmax(log_probs[0]))
        self._log_prob += float(log_probs[0, y])
        self._width = None if attention is None else attention.shape[1]
        if y == EOS_ID:
            self._finished = self.done = True
        else:
            self._tokens.append(y)
            if attention is not None:
                self._attention.append(attention[0])
            self.done = len(self._tokens) >= self.max_len
        return np.zeros(self.rows, dtype=np.int64)

    def certain(self) -> list[int]:
        return list(self._tokens)

    def result(self) -> Hypothesis:
        length = len(self._tokens) + int(self._finished)
        return Hypothesis(
            list(self._tokens), self._log_prob / length_penalty(length, self.alpha), self._log_prob,
            _stack(self._attention, self._width), self._finished,
        )


@dataclass
class _Beam:
    """An unfinished hypothesis: its tokens, attention rows and summed log-prob."""

    tokens: list[int]
    attention: list[np.ndarray]
    log_prob: float


class BeamSearch:
    """Beam search with GNMT length penalty; beam_size 1 makes the same choices as GreedySearch.

    Each step keeps the beam_size best non-EOS continuations; an EOS among the beam_size best
    candidates finishes a hypothesis. The search stops once it has beam_size finished hypotheses and
    the best live one, scored at its current length, cannot beat the worst of them (exact when
    length_penalty is 0), or after max_len steps.
    """

    def __init__(self, beam_size: int, max_len: int, length_penalty: float = 0.0) -> None:
        if beam_size < 1 or max_len < 1:
            raise ValueError(f"beam_size and max_len must be at least 1, got {beam_size} and {max_len}")
        self.beam_size = beam_size
        self.max_len = max_len
        self.alpha = length_penalty
        self.done = False
        self._beams = [_Beam([], [], 0.0)]
        self._finished: list[Hypothesis] = []
        self._steps = 0

    @property
    def rows(self) -> int:
        return 0 if self.done else len(self._beams)

    def tokens(self) -> np.ndarray:
        return np.array([b.tokens[-1] if b.tokens else BOS_ID for b in self._beams], dtype=np.int64)

    def _top(self, scores: np.ndarray, n: int) -> np.ndarray:
        """Flat indices of the n best scores, best first, ties broken by lower index (as np.argmax)."""
        picked = np.argpartition(-scores, n - 1)[:n] if n < scores.size else np.arange(scores.size)
        return picked[np.lexsort((picked, -scores[picked]))]

    def _hypothesis(self, beam: _Beam, log_prob: float, finished: bool, width: int | None) -> Hypothesis:
        length = len(beam.tokens) + int(finished)
        return Hypothesis(list(beam.tokens), log_prob / length_penalty(length, self.alpha), log_prob,
                          _stack(beam.attention, width), finished)

    def advance(self, log_probs: np.ndarray, attention: np.ndarray | None) -> np.ndarray:
        k, vocab = self.beam_size, log_probs.shape[1]
        width = None if attention is None else attention.shape[1]
        self._steps += 1
        totals = np.array([b.log_prob for b in self._beams])[:, None] + log_probs  # (rows, V)
        flat = totals.ravel()  # (rows * V,)
        beams, parents = [], []
        # Each row has one EOS candidate, so the 2k best hold at least k non-EOS continuations.
        for rank, index in enumerate(self._top(flat, min(2 * k, flat.size))):
            parent, y = divmod(int(index), vocab)
            beam = self._beams[parent]
            if y == EOS_ID:
                if rank < k:
                    self._finished.append(self._hypothesis(beam, float(flat[index]), True, width))
                continue
            rows = [*beam.attention, attention[parent]] if attention is not None else []
            beams.append(_Beam([*beam.tokens, y], rows, float(flat[index])))
            parents.append(parent)
            if len(beams) == k:
                break
        if self._steps >= self.max_len:
            self._finished += [self._hypothesis(b, b.log_prob, False, width) for b in beams]
            beams, parents = [], []
        self._beams = beams
        self.done = not beams or self._settled()
        return np.array(parents if not self.done else [], dtype=np.int64)

    def _settled(self) -> bool:
        if len(self._finished) < self.beam_size:
            return False
        worst_kept = sorted((h.score for h in self._finished), reverse=True)[self.beam_size - 1]
        best_live = max(b.log_prob for b in self._beams) / length_penalty(self._steps, self.alpha)
        return best_live <= worst_kept

    def certain(self) -> list[int]:
        if self.done:
            return self.result().tokens
        candidates = [b.tokens for b in self._beams] + [h.tokens for h in self._finished]
        prefix = candidates[0]
        for tokens in candidates[1:]:
            n = 0
            while n < min(len(prefix), len(tokens)) and prefix[n] == tokens[n]:
                n += 1
            prefix = prefix[:n]
        return list(prefix)

    def result(self) -> Hypothesis:
        if not self._finished:
            raise RuntimeError("result() called before the search finished")
        return max(self._finished, key=lambda h: h.score)


SearchFactory = Callable[[int], Search]  # source length -> a fresh search


def search_factory(
    beam_size: int = 1, length_penalty: float = 0.0, max_len_a: float = 1.5, max_len_b: float = 10.0,
    max_tokens: int = 256,
) -> SearchFactory:
    """Greedy for beam_size 1, else beam search; max_len = min(ceil(a * src_len + b), max_tokens)."""
    if beam_size < 1 or max_tokens < 1:
        raise ValueError(f"beam_size and max_tokens must be at least 1, got {beam_size} and {max_tokens}")

    def make(src_len: int) -> Search:
        max_len = min(max_output_length(src_len, max_len_a, max_len_b), max_tokens)
        if beam_size == 1:
            return GreedySearch(max_len, length_penalty)
        return BeamSearch(beam_size, max_len, length_penalty)

    return make


def advance_searches(
    searches: Sequence[Search], log_probs: np.ndarray, attention: np.ndarray | None,
    src_lengths: Sequence[int],
) -> np.ndarray:
    """Give each search its slice of the step; -> for every next-step row, the step row it continues."""
    follow, start = [], 0
    for search, src_len in zip(searches, src_lengths, strict=True):
        rows = slice(start, start + search.rows)
        weights = None if attention is None else attention[rows, :src_len]  # (rows, src_len)
        follow.append(start + search.advance(log_probs[rows], weights))
        start = rows.stop
    return np.concatenate(follow) if follow else np.zeros(0, dtype=np.int64)


def translate_batch(
    runner: Seq2SeqRunner, src_ids: np.ndarray, src_lengths: np.ndarray,
    make_search: SearchFactory | Sequence[SearchFactory],
) -> list[Hypothesis]:
    """Encode the batch once, then step every unfinished search's rows together until all are done.

    make_search is one factory for every sentence or one per sentence (requests with their own options).
    """
    src_lengths = np.asarray(src_lengths, dtype=np.int64)
    factories = [make_search] * len(src_lengths) if callable(make_search) else list(make_search)
    if len(factories) != len(src_lengths):
        raise ValueError(f"got {len(factories)} search factories for {len(src_lengths)} sentences")
    if src_lengths.size == 0:
        return []
    encoded = runner.encode(src_ids, src_lengths)
    searches = [make(int(n)) for make, n in zip(factories, src_lengths, strict=True)]
    owners = np.repeat(np.arange(len(searches)), [s.rows for s in searches])  # sentence of each row
    states = encoded.select(owners).states
    context, context_owners = encoded, None
    while owners.size:
        if context_owners is None or not np.array_equal(owners, context_owners):
            context, context_owners = encoded.select(owners), owners
        active = [i for i, s in enumerate(searches) if s.rows]
        tokens = np.concatenate([searches[i].tokens() for i in active])  # (R,)
        log_probs, attention, states = runner.step(
            tokens, context.memory, context.keys, context.src_mask, states)
        follow = advance_searches(
            [searches[i] for i in active], log_probs, attention, src_lengths[active].tolist())
        owners = owners[follow]
        states = {name: s[follow] for name, s in states.items()}
    return [s.result() for s in searches]
