"""Seq2seq decoding over ONNX Runtime: a generic graph runner and per-request search state machines.

A search is pure numpy: each step it says how many decoder rows it needs, which tokens they feed
and how many candidates per row it looks at; `advance` consumes those rows' best candidates (token
ids and log-probs, best first) and returns, for every row of the next step, the index of the row it
continues from. That contract lets one decoder call serve rows of many requests (`translate_batch`,
and the continuous-batching scheduler).

Decoder graphs exported by seqserve pick each row's best candidates themselves (a TopK node fed by
the `top_k` input), so the (rows, vocabulary) log-probs never leave onnxruntime; for older graphs
`top_k_rows` does the same selection in numpy, with the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from service.engine.shortlist import CANDIDATE_MASK_INPUT, CANDIDATES_INPUT, CandidateUnion
from service.engine.text import BOS_ID, EOS_ID

SENTENCE_INPUTS = ("memory", "keys", "src_mask")  # per-sentence step inputs, shared by a sentence's rows
TOP_K_INPUT, TOP_K_OUTPUTS = "top_k", ("top_log_probs", "top_ids")  # in-graph candidate selection
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
    alternatives: list[Hypothesis] = field(default_factory=list)  # the n best (this one first) when n > 1 was asked


class Seq2SeqRunner:
    """Runs encoder.onnx and the one-step decoder.onnx; learns the state names from the graphs."""

    def __init__(self, encoder_session: Any, decoder_session: Any, graph_top_k: bool = True,
                 shortlist_session: Any = None) -> None:
        """graph_top_k=False selects candidates in numpy even when the step graph could (for comparisons).
        `shortlist_session` is the step graph over candidate ids (`decoder_shortlist.onnx`), when the model has one."""
        self.encoder = encoder_session
        self.decoder = decoder_session
        self.shortlist_decoder = shortlist_session
        enc_outputs = [o.name for o in encoder_session.get_outputs()]
        self.state_names = [n for n in enc_outputs if n not in MEMORY_OUTPUTS]
        self.step_inputs = [i.name for i in decoder_session.get_inputs()]
        step_states = [n for n in self.step_inputs if n not in ("tokens", TOP_K_INPUT) and n not in SENTENCE_INPUTS]
        if "memory" not in enc_outputs or "tokens" not in self.step_inputs:
            raise ValueError("encoder graph must output 'memory' and decoder graph must take 'tokens'")
        if sorted(step_states) != sorted(self.state_names):
            raise ValueError(f"encoder states {self.state_names} do not match decoder states {step_states}")
        step_outputs = {o.name for o in decoder_session.get_outputs()}
        missing = {"log_probs", *(f"{n}_out" for n in self.state_names)} - step_outputs
        if missing:
            raise ValueError(f"decoder graph lacks outputs {sorted(missing)}")
        self.attends = "attention" in step_outputs
        self.top_k_in_graph = graph_top_k and TOP_K_INPUT in self.step_inputs and set(TOP_K_OUTPUTS) <= step_outputs
        width = next(o.shape for o in decoder_session.get_outputs() if o.name == "log_probs")[-1]
        self.vocab = width if isinstance(width, int) else None  # TopK refuses k above the vocabulary
        scores = list(TOP_K_OUTPUTS) if self.top_k_in_graph else ["log_probs"]
        self._step_outputs = [*scores, *(["attention"] if self.attends else []),
                              *(f"{n}_out" for n in self.state_names)]
        if shortlist_session is not None:
            self._check_shortlist_graph(shortlist_session)

    def _check_shortlist_graph(self, session: Any) -> None:
        inputs = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        wanted = set(self.step_inputs) | {CANDIDATES_INPUT, CANDIDATE_MASK_INPUT, TOP_K_INPUT}
        if inputs != wanted or not set(self._step_outputs) | set(TOP_K_OUTPUTS) <= outputs | {"log_probs"}:
            raise ValueError(f"the shortlist step graph takes {sorted(inputs)} and gives {sorted(outputs)}; expected "
                             f"the step graph's inputs with {CANDIDATES_INPUT} and {CANDIDATE_MASK_INPUT}")
        self._shortlist_outputs = [*TOP_K_OUTPUTS, *(["attention"] if self.attends else []),
                                   *(f"{n}_out" for n in self.state_names)]

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
        src_mask: np.ndarray | None, states: dict[str, np.ndarray], k: int = 1,
        shortlist: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> StepOutput:
        """One decoder step for R rows: each row's k best next tokens, attention (R, S) or None, next states.

        With `shortlist` (candidate ids (C,) and a mask (R, C)) the shortlist graph scores only those ids,
        each row over its own masked ones (see engine/shortlist.py); ids come back in the full vocabulary."""
        if shortlist is not None and self.shortlist_decoder is None:
            raise ValueError("this model has no shortlist step graph")
        if self.vocab is not None:
            k = min(k, self.vocab)
        available = {"tokens": np.asarray(tokens, dtype=np.int64), "memory": memory, "keys": keys,
                     "src_mask": src_mask, TOP_K_INPUT: np.array([k], dtype=np.int64), **states}
        if shortlist is not None:
            candidates, mask = shortlist
            available[TOP_K_INPUT] = np.array([min(k, len(candidates))], dtype=np.int64)
            feeds = {name: available[name] for name in self.step_inputs}
            feeds[CANDIDATES_INPUT], feeds[CANDIDATE_MASK_INPUT] = candidates, mask
            out = dict(zip(self._shortlist_outputs, self.shortlist_decoder.run(self._shortlist_outputs, feeds),
                           strict=True))
            return StepOutput(out["top_log_probs"], out["top_ids"], out.get("attention"),
                              {n: out[f"{n}_out"] for n in self.state_names})
        feeds = {name: available[name] for name in self.step_inputs}
        out = dict(zip(self._step_outputs, self.decoder.run(self._step_outputs, feeds), strict=True))
        if self.top_k_in_graph:
            top_log_probs, top_ids = out["top_log_probs"], out["top_ids"]
        else:
            top_log_probs, top_ids = top_k_rows(out["log_probs"], k)
        return StepOutput(top_log_probs, top_ids, out.get("attention"),
                          {n: out[f"{n}_out"] for n in self.state_names})


@dataclass
class StepOutput:
    top_log_probs: np.ndarray  # (R, k) float32, each row best first
    top_ids: np.ndarray  # (R, k) int64 token ids; equal log-probs in ascending id order
    attention: np.ndarray | None  # (R, S), None for a graph without attention
    states: dict[str, np.ndarray]  # next decoder states, each (R, ...)


def top_k_rows(log_probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k largest values and their indices, best first, ties by lower index (ONNX TopK's order)."""
    k = min(k, log_probs.shape[1])
    if k < log_probs.shape[1]:
        ids = np.argpartition(-log_probs, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(log_probs, ids, axis=1).min(axis=1)
        for row in np.flatnonzero((log_probs >= kth[:, None]).sum(axis=1) > k):  # ties at the k-th value
            tied = np.flatnonzero(log_probs[row] >= kth[row])
            ids[row] = tied[np.lexsort((tied, -log_probs[row, tied]))][:k]
    else:
        ids = np.broadcast_to(np.arange(k), log_probs.shape)
    values = np.take_along_axis(log_probs, ids, axis=1)
    order = np.lexsort((ids, -values), axis=-1)
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(ids, order, axis=1).astype(np.int64)


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

    @property
    def candidates(self) -> int:
        """How many of each row's best next tokens `advance` needs."""
        ...

    def tokens(self) -> np.ndarray: ...

    def advance(self, top_log_probs: np.ndarray, top_ids: np.ndarray, attention: np.ndarray | None) -> np.ndarray:
        ...

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

    candidates = 1

    def tokens(self) -> np.ndarray:
        return np.array([self._tokens[-1] if self._tokens else BOS_ID], dtype=np.int64)

    def advance(self, top_log_probs: np.ndarray, top_ids: np.ndarray, attention: np.ndarray | None) -> np.ndarray:
        y = int(top_ids[0, 0])  # the argmax, the lowest id among equals
        self._log_prob += float(top_log_probs[0, 0])
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


EARLY_STOPPING = ("bound", "length", "beam")  # beam search's stopping rules; the first is the default


class BeamSearch:
    """Beam search with GNMT length penalty; beam_size 1 makes the same choices as GreedySearch.

    Each step keeps the beam_size best non-EOS continuations; an EOS among the beam_size best
    candidates finishes a hypothesis. The search ends after max_len steps, when no live hypothesis is
    left, or by its `early_stopping` rule:

    - "bound" (default): once num_hypotheses have finished and none of the live ones can beat the n-th best of
      them. A live hypothesis's final score is at most its log-prob so far (later tokens only add log-probs
      at most 0) over the most favourable length penalty it could still reach (at max_len for a positive
      alpha), so this never changes the answer of searching to max_len; it stops as soon as the answer is settled.
    - "length": once beam_size have finished and the best live one, scored at its current length, cannot beat the
      worst of them (the rule of OpenNMT-py and of Hugging Face's early_stopping=False; exact only for alpha 0).
    - "beam": once beam_size have finished (Hugging Face's early_stopping=True); fewest steps, may change answers.
    """

    def __init__(self, beam_size: int, max_len: int, length_penalty: float = 0.0, num_hypotheses: int = 1,
                 early_stopping: str = "bound") -> None:
        if beam_size < 1 or max_len < 1:
            raise ValueError(f"beam_size and max_len must be at least 1, got {beam_size} and {max_len}")
        if not 1 <= num_hypotheses <= beam_size:
            raise ValueError(f"num_hypotheses must be between 1 and beam_size={beam_size}, got {num_hypotheses}")
        if early_stopping not in EARLY_STOPPING:
            raise ValueError(f"early_stopping must be one of {', '.join(EARLY_STOPPING)}, got {early_stopping!r}")
        self.early_stopping = early_stopping
        self.beam_size = beam_size
        self.num_hypotheses = num_hypotheses
        self.max_len = max_len
        self.alpha = length_penalty
        self.done = False
        self._beams = [_Beam([], [], 0.0)]
        self._finished: list[Hypothesis] = []
        self._steps = 0

    @property
    def rows(self) -> int:
        return 0 if self.done else len(self._beams)

    @property
    def candidates(self) -> int:
        return 2 * self.beam_size

    def tokens(self) -> np.ndarray:
        return np.array([b.tokens[-1] if b.tokens else BOS_ID for b in self._beams], dtype=np.int64)

    def _hypothesis(self, beam: _Beam, log_prob: float, finished: bool, width: int | None) -> Hypothesis:
        length = len(beam.tokens) + int(finished)
        return Hypothesis(list(beam.tokens), log_prob / length_penalty(length, self.alpha), log_prob,
                          _stack(beam.attention, width), finished)

    def advance(self, top_log_probs: np.ndarray, top_ids: np.ndarray, attention: np.ndarray | None) -> np.ndarray:
        k = self.beam_size
        width = None if attention is None else attention.shape[1]
        self._steps += 1
        # The 2k best (row, token) continuations overall are among the rows' own 2k best, since a row's
        # summed log-prob shifts all its candidates alike. Order: total desc, then row, then token id.
        totals = (np.array([b.log_prob for b in self._beams])[:, None] + top_log_probs).ravel()
        parents_of = np.repeat(np.arange(top_ids.shape[0]), top_ids.shape[1])
        ids = top_ids.ravel()
        ranked = np.lexsort((ids, parents_of, -totals))[: 2 * k]
        beams, parents = [], []
        # Each row has one EOS candidate, so the 2k best hold at least k non-EOS continuations.
        for rank, index in enumerate(ranked):
            parent, y, total = int(parents_of[index]), int(ids[index]), float(totals[index])
            if total == -math.inf:  # masked out by a shortlist shorter than the candidates asked for: none follow
                break
            beam = self._beams[parent]
            if y == EOS_ID:
                if rank < k:
                    self._finished.append(self._hypothesis(beam, total, True, width))
                continue
            rows = [*beam.attention, attention[parent]] if attention is not None else []
            beams.append(_Beam([*beam.tokens, y], rows, total))
            parents.append(parent)
            if len(beams) == k:
                break
        if self._steps >= self.max_len:
            self._finished += [self._hypothesis(b, b.log_prob, False, width) for b in beams]
            beams, parents = [], []
        self._beams = beams
        self.done = not beams or self._settled()
        return np.array(parents if not self.done else [], dtype=np.int64)

    @property
    def steps(self) -> int:
        """Decoder steps taken so far."""
        return self._steps

    def _settled(self) -> bool:
        if self.early_stopping == "bound":
            n = self.num_hypotheses
            if len(self._finished) < n:
                return False
            nth_best = sorted((h.score for h in self._finished), reverse=True)[n - 1]
            best_log_prob = max(b.log_prob for b in self._beams)
            # the score is monotonic in the final length, which lies between steps + 1 (EOS next) and max_len
            reachable = (length_penalty(self._steps + 1, self.alpha), length_penalty(self.max_len, self.alpha))
            return max(best_log_prob / p for p in reachable) <= nth_best
        if len(self._finished) < self.beam_size:
            return False
        if self.early_stopping == "beam":
            return True
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
        """The best finished hypothesis; with num_hypotheses n > 1, its `alternatives` are the n best, best first
        (ties by the order they finished in)."""
        if not self._finished:
            raise RuntimeError("result() called before the search finished")
        ranked = sorted(self._finished, key=lambda h: -h.score)
        best = ranked[0]
        if self.num_hypotheses > 1:
            best = replace(best, alternatives=ranked[: self.num_hypotheses])
        return best


SearchFactory = Callable[[int], Search]  # source length -> a fresh search


def search_factory(
    beam_size: int = 1, length_penalty: float = 0.0, max_len_a: float = 1.5, max_len_b: float = 10.0,
    max_tokens: int = 256, num_hypotheses: int = 1, early_stopping: str = "bound",
) -> SearchFactory:
    """Greedy for beam_size 1, else beam search; max_len = min(ceil(a * src_len + b), max_tokens). With
    num_hypotheses n > 1 (at most beam_size) each result carries the n best hypotheses."""
    if beam_size < 1 or max_tokens < 1:
        raise ValueError(f"beam_size and max_tokens must be at least 1, got {beam_size} and {max_tokens}")
    if not 1 <= num_hypotheses <= beam_size:
        raise ValueError(f"num_hypotheses must be between 1 and beam_size={beam_size}, got {num_hypotheses}")
    if early_stopping not in EARLY_STOPPING:
        raise ValueError(f"early_stopping must be one of {', '.join(EARLY_STOPPING)}, got {early_stopping!r}")

    def make(src_len: int) -> Search:
        max_len = min(max_output_length(src_len, max_len_a, max_len_b), max_tokens)
        if beam_size == 1:
            return GreedySearch(max_len, length_penalty)
        return BeamSearch(beam_size, max_len, length_penalty, num_hypotheses, early_stopping)

    return make


def step_candidates(searches: Sequence[Search]) -> int:
    """Candidates per row one shared decoder step must return: the most any of its searches needs."""
    return max((s.candidates for s in searches), default=1)


def advance_searches(
    searches: Sequence[Search], step: StepOutput, src_lengths: Sequence[int],
) -> np.ndarray:
    """Give each search its slice of the step; -> for every next-step row, the step row it continues."""
    follow, start = [], 0
    for search, src_len in zip(searches, src_lengths, strict=True):
        rows = slice(start, start + search.rows)
        weights = None if step.attention is None else step.attention[rows, :src_len]  # (rows, src_len)
        follow.append(start + search.advance(step.top_log_probs[rows, : search.candidates],
                                             step.top_ids[rows, : search.candidates], weights))
        start = rows.stop
    return np.concatenate(follow) if follow else np.zeros(0, dtype=np.int64)


def translate_batch(
    runner: Seq2SeqRunner, src_ids: np.ndarray, src_lengths: np.ndarray,
    make_search: SearchFactory | Sequence[SearchFactory],
    shortlists: Sequence[np.ndarray | None] | None = None,
) -> list[Hypothesis]:
    """Encode the batch once, then step every unfinished search's rows together until all are done.

    make_search is one factory for every sentence or one per sentence (requests with their own options).
    `shortlists` gives each sentence's candidate target ids (None: the whole vocabulary); with any, the steps run
    the shortlist graph over their union, each row masked to its own sentence's ids.
    """
    src_lengths = np.asarray(src_lengths, dtype=np.int64)
    factories = [make_search] * len(src_lengths) if callable(make_search) else list(make_search)
    if len(factories) != len(src_lengths):
        raise ValueError(f"got {len(factories)} search factories for {len(src_lengths)} sentences")
    if shortlists is not None and len(shortlists) != len(src_lengths):
        raise ValueError(f"got {len(shortlists)} shortlists for {len(src_lengths)} sentences")
    if src_lengths.size == 0:
        return []
    union = None
    if shortlists is not None and any(s is not None for s in shortlists):
        if runner.shortlist_decoder is None or runner.vocab is None:
            raise ValueError("shortlists need a model with a shortlist step graph")
        union = CandidateUnion(runner.vocab)
        for i, ids in enumerate(shortlists):
            union.add(i, ids)
    encoded = runner.encode(src_ids, src_lengths)
    searches = [make(int(n)) for make, n in zip(factories, src_lengths, strict=True)]
    owners = np.repeat(np.arange(len(searches)), [s.rows for s in searches])  # sentence of each row
    states = encoded.select(owners).states
    context, context_owners = encoded, None
    candidates: tuple[np.ndarray, np.ndarray] | None = None
    mask_shape: tuple[int, ...] = ()
    while owners.size:
        if context_owners is None or not np.array_equal(owners, context_owners):
            context, context_owners = encoded.select(owners), owners
        live = [i for i, s in enumerate(searches) if s.rows]
        active = [searches[i] for i in live]
        tokens = np.concatenate([s.tokens() for s in active])  # (R,)
        if union is not None:  # the mask changes only when a sentence finishes, a beam widens or the union shrinks
            shape = (union.version, *live, *(s.rows for s in active))
            if shape != mask_shape:
                mask, mask_shape = union.mask(live, [s.rows for s in active]), shape
            candidates = (union.ids, mask)
        step = runner.step(tokens, context.memory, context.keys, context.src_mask, states, step_candidates(active),
                           candidates)
        follow = advance_searches(active, step, src_lengths[live].tolist())
        if union is not None:
            for i in live:
                if searches[i].done:
                    union.remove(i)
        owners = owners[follow]
        states = {name: s[follow] for name, s in step.states.items()}
    return [s.result() for s in searches]
