"""The translator's side of iteration-level batching: encoder outputs in row buffers, one decoder step for every
active hypothesis of every active request (the `IterationEngine` that `batching.scheduler` drives)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from service.batching.scheduler import SeqRequest
from service.engine.decoding import Search, Seq2SeqRunner, step_candidates
from service.engine.shortlist import CandidateUnion
from service.engine.text import pad_batch
from service.engine.translator import Translation, TranslatorRuntime
from service.metrics import Metrics


class RowBuffers:
    """Encoder outputs laid out by decoder row, in preallocated arrays: (capacity rows, width, ...).

    The active requests own consecutive row ranges in the order of `DecodeEngine.active`, so the first
    `rows` rows are exactly the decoder's per-row memory and keys, handed over without a gather. Admitting
    a request writes only its own rows; one leaving is replaced by the last request when their row counts
    match (a copy of one request's rows), otherwise the rows after it move up. The arrays are rebuilt only
    when a longer source needs more width, when the widest request has left (to stop attending to
    padding), or when rows outgrow the capacity.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.rows = 0
        self.width = 0
        self.arrays: dict[str, np.ndarray] = {}
        self.lengths = np.zeros(self.capacity, dtype=np.int64)  # source length of each row's sentence

    def _resize(self, capacity: int, width: int) -> None:
        for name, old in self.arrays.items():
            new = np.zeros((capacity, width, *old.shape[2:]), dtype=old.dtype)
            keep = min(width, self.width)
            new[: self.rows, :keep] = old[: self.rows, :keep]
            self.arrays[name] = new
        lengths = np.zeros(capacity, dtype=np.int64)
        lengths[: self.rows] = self.lengths[: self.rows]
        self.capacity, self.width, self.lengths = capacity, width, lengths

    def append(self, outputs: dict[str, np.ndarray], length: int, rows: int) -> int:
        """Add `rows` rows sharing one sentence's outputs (each (length, ...)); -> the first row's index."""
        if self.rows + rows > self.capacity or length > self.width:
            self._resize(max(self.capacity, 2 * (self.rows + rows)), max(self.width, length))
        at = self.rows
        for name, value in outputs.items():
            if name not in self.arrays:
                self.arrays[name] = np.zeros((self.capacity, self.width, *value.shape[1:]), dtype=value.dtype)
            block = self.arrays[name][at: at + rows]
            block[:, :length] = value
            block[:, length:] = 0
        self.lengths[at: at + rows] = length
        self.rows += rows
        return at

    def move(self, source: int, target: int, count: int) -> None:
        """Rows [source, source+count) to [target, target+count); overlapping ranges are fine."""
        for array in self.arrays.values():
            array[target: target + count] = array[source: source + count].copy()
        self.lengths[target: target + count] = self.lengths[source: source + count].copy()

    def truncate(self, rows: int) -> None:
        self.rows = rows
        needed = int(self.lengths[:rows].max(initial=0))
        if 0 < needed <= self.width // 2:  # the widest sentences have gone: attend over less padding
            self._resize(self.capacity, needed)

    def view(self, name: str) -> np.ndarray | None:
        array = self.arrays.get(name)
        return None if array is None else array[: self.rows]  # contiguous: handed to onnxruntime as is

    def mask(self) -> np.ndarray:
        return np.arange(self.width)[None, :] < self.lengths[: self.rows, None]  # (rows, width)


class DecodeEngine:
    """A translator's decoding state; touched only from the compute thread, one iteration at a time."""

    def __init__(self, runtime: TranslatorRuntime, max_rows: int, metrics: Metrics, name: str) -> None:
        self.runner: Seq2SeqRunner = runtime.runner
        self.runtime, self.metrics, self.name, self.max_rows = runtime, metrics, name, max_rows
        self.buffers = RowBuffers(max_rows)
        self.active: list[SeqRequest] = []  # their rows, in this order, are the buffers' rows
        self.states: dict[str, np.ndarray] = {}
        # the active requests' shortlists, kept as they join and leave; the step's mask is rebuilt only when the
        # active requests or the union change
        vocab = self.runner.vocab
        shortlisted = runtime.shortlist is not None and runtime.use_shortlist
        self.union = CandidateUnion(vocab) if shortlisted and vocab else None
        self._mask: tuple[int, np.ndarray] | None = None  # (union version, mask) for the current active list

    @property
    def rows(self) -> int:
        return self.buffers.rows

    @property
    def tokens(self) -> int:
        return sum(len(r.item.src_ids) for r in self.active)

    def cost(self, item: Any) -> tuple[int, int]:
        """Rows (its beam size) and source tokens a waiting request will take."""
        return item.options.beam_size, len(item.src_ids)

    def finish(self, r: SeqRequest) -> Translation:
        assert r.search is not None
        hyp = r.search.result()
        self.metrics.tokens_per_request.labels(self.name).observe(len(hyp.tokens))
        return self.runtime.finish(r.item.src_ids, hyp)

    def certain(self, r: SeqRequest) -> list[int]:
        search: Search = r.search
        return search.result().tokens if search.done else search.certain()

    def fresh(self) -> DecodeEngine:
        return DecodeEngine(self.runtime, self.max_rows, self.metrics, self.name)

    def drop(self, leaving: list[SeqRequest]) -> None:
        """Remove requests (finished or gone) and their rows."""
        if not leaving:
            return
        gone = {id(r) for r in leaving}
        if self.union is not None:
            for r in leaving:
                if id(r) in self.union.members:
                    self.union.remove(id(r))
        self._mask = None
        order = list(range(sum(r.rows for r in self.active)))  # order[i]: old row now at row i
        for r in sorted((r for r in self.active if id(r) in gone), key=lambda r: -r.first_row):
            at, n = r.first_row, r.rows
            last = self.active[-1]
            if last is not r and last.rows == n:  # the last request fills the hole: one request's rows copied
                self.buffers.move(last.first_row, at, n)
                order[at: at + n] = order[last.first_row: last.first_row + n]
                del order[last.first_row:]
                last.first_row = at
                self.active[self.active.index(r)] = last
                self.active.pop()
            else:  # the rows after it move up
                tail = self.buffers.rows - (at + n)
                self.buffers.move(at + n, at, tail)
                del order[at: at + n]
                self.active.remove(r)
                for other in self.active:
                    if other.first_row > at:
                        other.first_row -= n
            self.buffers.rows -= n
        self.buffers.truncate(self.buffers.rows)
        index = np.array(order, dtype=np.int64)
        self.states = {k: v[index] for k, v in self.states.items()}

    def admit(self, admitted: list[SeqRequest]) -> None:
        """Encode the newly admitted requests together and append each one's rows."""
        if not admitted:
            return
        ids, lengths = pad_batch([r.item.src_ids for r in admitted])
        encoded = self.runner.encode(ids, lengths)
        new_states: dict[str, list[np.ndarray]] = {k: [] for k in encoded.states}
        self._mask = None
        for i, r in enumerate(admitted):
            n = int(lengths[i])
            r.search = r.item.options.factory()(n)
            if self.union is not None:
                shortlist = self.runtime.shortlist
                assert shortlist is not None
                self.union.add(id(r), shortlist.for_sentence(r.item.src_ids) if r.item.options.shortlist else None)
            r.rows = max(r.search.rows, r.item.options.beam_size)  # reserved for the whole search
            outputs = {"memory": encoded.memory[i, :n]}
            if encoded.keys is not None:
                outputs["keys"] = encoded.keys[i, :n]
            r.first_row = self.buffers.append(outputs, n, r.rows)
            for k, v in encoded.states.items():
                new_states[k].append(np.repeat(v[i: i + 1], r.rows, axis=0))
        for k, parts in new_states.items():
            self.states[k] = np.concatenate([self.states[k], *parts]) if k in self.states else np.concatenate(parts)
        self.active.extend(admitted)

    def step(self) -> list[SeqRequest]:
        """One decoder call for every active row; returns the requests that finished.

        A request owns `rows` rows (its beam size) from admission on; while its search uses fewer (a beam
        search starts from one hypothesis) the spare rows repeat its first token and their outputs are unused.
        """
        if not self.active:
            return []
        searches: list[Search] = [r.search for r in self.active if r.search is not None]
        tokens = np.concatenate([_fill(s.tokens(), r.rows) for r, s in zip(self.active, searches, strict=True)])
        assert len(tokens) == self.buffers.rows, "rows out of step with the buffers"
        self.metrics.batch_size.labels(self.name).observe(len(tokens))  # rows in this decoder step
        start = time.perf_counter()
        step = self.runner.step(tokens, self.buffers.view("memory"), self.buffers.view("keys"), self.buffers.mask(),
                                self.states, step_candidates(searches), self._candidates())
        self.metrics.decode_step.labels(self.name).observe(time.perf_counter() - start)
        follow, finished = [], []
        for r, search in zip(self.active, searches, strict=True):
            own = slice(r.first_row, r.first_row + search.rows)
            weights = None if step.attention is None else step.attention[own, : len(r.item.src_ids)]
            k = search.candidates
            parents = search.advance(step.top_log_probs[own, :k], step.top_ids[own, :k], weights)
            if search.done:
                finished.append(r)  # its rows stay in place (unused) until drop()
                parents = np.arange(r.rows)
            elif len(parents) > r.rows:
                raise RuntimeError(f"a search grew to {len(parents)} rows; {r.rows} were reserved")
            follow.append(r.first_row + _fill(parents, r.rows))
        self.metrics.generated_tokens.labels(self.name).inc(len(self.active))
        index = np.concatenate(follow)
        self.states = {k: v[index] for k, v in step.states.items()}
        return finished

    def _candidates(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The step's candidate ids and row mask; None when every active request decodes over the whole vocabulary."""
        union = self.union
        if union is None or union.full == len(union):
            return None
        if self._mask is None or self._mask[0] != union.version:
            self._mask = (union.version, union.mask([id(r) for r in self.active], [r.rows for r in self.active]))
        return union.ids, self._mask[1]


def _fill(values: np.ndarray, n: int) -> np.ndarray:
    """`values` padded to n entries by repeating its first (spare rows shadow a real one)."""
    return values if len(values) == n else np.concatenate([values, np.repeat(values[:1], n - len(values))])
