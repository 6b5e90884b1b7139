"""Iteration-level (continuous) batching for translators, after Orca.

Each iteration: admit waiting requests FIFO while rows and source tokens fit (their encoder runs
together), make one decoder-step call over every active hypothesis of every active request, then
answer the requests that finished. Encoder outputs live in preallocated row buffers laid out as the
decoder reads them, so admitting a request writes only its own rows and no step gathers. The policy
(`plan_admission`, `plan_retirement`) is pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.batching.queue import DeadlineExceeded, Gate, OnTokens, ShuttingDown
from service.engine.decoding import Search, Seq2SeqRunner, step_candidates
from service.engine.text import pad_batch
from service.engine.translator import DecodeOptions, Translation, TranslatorRuntime
from service.metrics import Metrics

log = logging.getLogger("seqserve.scheduler")


@dataclass(frozen=True)
class Candidate:
    """What admission needs to know about one waiting request."""

    rows: int  # decoder rows it will need (its beam size)
    src_tokens: int
    deadline: float | None = None
    gone: bool = False


@dataclass(frozen=True)
class Admission:
    admit: list[int]
    expired: list[int] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)


def plan_admission(waiting: Sequence[Candidate], free_rows: int, free_src_tokens: int, free_slots: int,
                   now: float, idle: bool) -> Admission:
    """FIFO admission: drop gone and expired requests, then admit from the head while it fits.

    Admission stops at the first request that does not fit (no overtaking, so no starvation); when
    nothing is active the head is admitted even if it alone exceeds a budget, so it cannot block.
    """
    gone = [i for i, c in enumerate(waiting) if c.gone]
    expired = [i for i, c in enumerate(waiting) if not c.gone and c.deadline is not None and c.deadline <= now]
    dropped = set(gone) | set(expired)
    admit: list[int] = []
    for i, c in enumerate(waiting):
        if i in dropped:
            continue
        fits = c.rows <= free_rows and c.src_tokens <= free_src_tokens and free_slots > 0
        if not fits and not (idle and not admit and free_slots > 0):
            break
        admit.append(i)
        free_rows, free_src_tokens, free_slots = free_rows - c.rows, free_src_tokens - c.src_tokens, free_slots - 1
    return Admission(admit, expired, gone)


def plan_retirement(done: Sequence[bool], gone: Sequence[bool]) -> list[int]:
    """Active requests that leave after this iteration: finished, or their client has gone."""
    return [i for i, (d, g) in enumerate(zip(done, gone, strict=True)) if d or g]


@dataclass(eq=False)  # identity: two requests for the same text are still two requests
class SeqRequest:
    src_ids: list[int]
    options: DecodeOptions
    enqueued: float
    deadline: float | None
    future: asyncio.Future[Translation]
    on_tokens: OnTokens | None = None  # certain target ids so far (streaming)
    first_row: int = -1  # its rows in the engine: [first_row, first_row + rows)
    rows: int = 0
    search: Search | None = None
    sent: int = 0  # certain tokens already reported
    stepped: bool = False  # had its first decoder step

    @property
    def gone(self) -> bool:
        return self.future.done()


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
    """The decoding state; touched only from the compute thread, one iteration at a time."""

    def __init__(self, runtime: TranslatorRuntime, max_rows: int, metrics: Metrics, name: str) -> None:
        self.runner: Seq2SeqRunner = runtime.runner
        self.runtime, self.metrics, self.name = runtime, metrics, name
        self.buffers = RowBuffers(max_rows)
        self.active: list[SeqRequest] = []  # their rows, in this order, are the buffers' rows
        self.states: dict[str, np.ndarray] = {}

    @property
    def rows(self) -> int:
        return self.buffers.rows

    @property
    def src_tokens(self) -> int:
        return sum(len(r.src_ids) for r in self.active)

    def drop(self, leaving: list[SeqRequest]) -> None:
        """Remove requests (finished or gone) and their rows."""
        if not leaving:
            return
        gone = {id(r) for r in leaving}
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
        ids, lengths = pad_batch([r.src_ids for r in admitted])
        encoded = self.runner.encode(ids, lengths)
        new_states: dict[str, list[np.ndarray]] = {k: [] for k in encoded.states}
        for i, r in enumerate(admitted):
            n = int(lengths[i])
            r.search = r.options.factory()(n)
            r.rows = max(r.search.rows, r.options.beam_size)  # reserved for the whole search
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
                                self.states, step_candidates(searches))
        self.metrics.decode_step.labels(self.name).observe(time.perf_counter() - start)
        follow, finished = [], []
        for r, search in zip(self.active, searches, strict=True):
            own = slice(r.first_row, r.first_row + search.rows)
            weights = None if step.attention is None else step.attention[own, : len(r.src_ids)]
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


def _fill(values: np.ndarray, n: int) -> np.ndarray:
    """`values` padded to n entries by repeating its first (spare rows shadow a real one)."""
    return values if len(values) == n else np.concatenate([values, np.repeat(values[:1], n - len(values))])


class ContinuousScheduler:
    """A bounded FIFO waiting queue (event-loop side) and a decode thread that runs iterations back to back.

    The thread never waits for the event loop: it admits, steps and answers on its own, handing results and
    stream tokens to the loop with `call_soon_threadsafe`, so HTTP work on the loop and decoding overlap.
    """

    def __init__(self, name: str, runtime: TranslatorRuntime, metrics: Metrics, max_rows: int,
                 max_src_tokens: int, max_queue: int) -> None:
        self.name, self.runtime, self.metrics = name, runtime, metrics
        self.max_rows, self.max_src_tokens, self.max_queue = max_rows, max_src_tokens, max_queue
        self.engine = DecodeEngine(runtime, max_rows=max_rows, metrics=metrics, name=name)
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._waiting: list[SeqRequest] = []  # guarded by _lock
        self.gate = Gate(name, max_queue, metrics)  # closed: no new requests; the thread ends once all are answered
        self._abandon = False  # the drain bound passed: the thread ends after the current step
        self._stopped = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=f"decode-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._waiting)

    def check(self, count: int) -> None:
        self.gate.check(len(self._waiting), count)

    def submit(self, payloads: Sequence[Any], lengths: Sequence[int], deadline: float | None = None,
               on_tokens: OnTokens | None = None) -> list[asyncio.Future[Any]]:
        """Queue every item (TranslateItem) or none; one future per item."""
        now = time.monotonic()
        with self._lock:
            self.gate.check(len(self._waiting), len(payloads))
            futures: list[asyncio.Future[Any]] = []
            for item in payloads:
                future: asyncio.Future[Translation] = self._loop.create_future()
                self._waiting.append(SeqRequest(item.src_ids, item.options, now, deadline, future, on_tokens))
                futures.append(future)
            self.metrics.queue_depth.labels(self.name).set(len(self._waiting))
            self._work.notify()
        return futures

    # ---- the decode thread ----

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not (self._waiting or self.engine.active or self.gate.closed or self._abandon):
                        self._work.wait()
                    if self._abandon or (self.gate.closed and not self._waiting and not self.engine.active):
                        return
                    try:
                        admitted = self._admission()
                    except Exception as exc:  # a bug in admission must not leave requests waiting forever
                        log.exception("admission failed on model %s", self.name)
                        for r in self._waiting:
                            self._answer(r.future, error=exc)
                        self._waiting = []
                        continue
                try:
                    finished = self._iterate(admitted)
                except Exception as exc:  # a failed step fails the requests in it; the scheduler goes on
                    log.exception("decode iteration failed on model %s", self.name)
                    for r in {id(r): r for r in self.engine.active + admitted}.values():
                        self._answer(r.future, error=exc)
                    self.engine = DecodeEngine(self.runtime, self.max_rows, self.metrics, self.name)
                    continue
                self._report(finished)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                self._loop.call_soon_threadsafe(self._stopped.set)

    def _admission(self) -> list[SeqRequest]:
        """Under the lock: apply the FIFO policy to the waiting queue."""
        engine = self.engine
        plan = plan_admission(
            [Candidate(r.options.beam_size, len(r.src_ids), r.deadline, r.gone) for r in self._waiting],
            self.max_rows - engine.rows, self.max_src_tokens - engine.src_tokens, self.max_rows - len(engine.active),
            time.monotonic(), idle=not engine.active)
        for i in plan.expired:
            expired = DeadlineExceeded("deadline passed before compute; work skipped")
            self._answer(self._waiting[i].future, error=expired)
        if plan.expired:
            self.metrics.rejections.labels(self.name, "deadline").inc(len(plan.expired))
        if plan.gone:
            self.metrics.rejections.labels(self.name, "client_gone").inc(len(plan.gone))
        admitted = [self._waiting[i] for i in plan.admit]
        leaving = set(plan.admit) | set(plan.expired) | set(plan.gone)
        if leaving:
            self._waiting = [r for i, r in enumerate(self._waiting) if i not in leaving]
            self.metrics.queue_depth.labels(self.name).set(len(self._waiting))
        now = time.monotonic()
        for r in admitted:
            self.metrics.queue_wait.labels(self.name).observe(now - r.enqueued)
        return admitted

    def _iterate(self, admitted: list[SeqRequest]) -> list[tuple[SeqRequest, Translation]]:
        """Drop requests whose client has gone, encode the admitted, one decoder step; -> the finished."""
        gone = [r for r in self.engine.active if r.gone]
        if gone:
            self.engine.drop(gone)
            self.metrics.rejections.labels(self.name, "client_gone").inc(len(gone))
        self.engine.admit(admitted)
        finished = self.engine.step()
        self.engine.drop(finished)
        return [(r, self._finish(r)) for r in finished]

    def _finish(self, r: SeqRequest) -> Translation:
        assert r.search is not None
        hyp = r.search.result()
        self.metrics.tokens_per_request.labels(self.name).observe(len(hyp.tokens))
        return self.runtime.finish(r.src_ids, hyp)

    def _report(self, finished: list[tuple[SeqRequest, Translation]]) -> None:
        """Time to first token, new certain tokens to streams, answers to the finished."""
        now = time.monotonic()
        for r in self.engine.active:
            if r.search is None or r.gone:
                continue
            if r.on_tokens is None:  # a plain request: its first decoder step made its first token
                if not r.stepped:
                    r.stepped = True
                    self.metrics.time_to_first_token.labels(self.name).observe(now - r.enqueued)
                continue
            self._stream(r, r.search.certain(), now)
        for r, translation in finished:
            if r.on_tokens is not None:
                self._stream(r, translation.target_ids, now)
            elif not r.stepped:
                self.metrics.time_to_first_token.labels(self.name).observe(now - r.enqueued)
            self._answer(r.future, translation)
        self.metrics.active_sequences.labels(self.name).set(len(self.engine.active))
        self.metrics.active_rows.labels(self.name).set(self.engine.rows)

    def _stream(self, r: SeqRequest, certain: list[int], now: float) -> None:
        if len(certain) > r.sent and r.on_tokens is not None:
            if r.sent == 0:
                self.metrics.time_to_first_token.labels(self.name).observe(now - r.enqueued)
            r.sent = len(certain)
            self._loop.call_soon_threadsafe(r.on_tokens, list(certain))

    def _answer(self, future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
        """Resolve a future from the decode thread (unless its client has gone meanwhile)."""

        def resolve() -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(resolve)

    # ---- event-loop side ----

    async def close(self, timeout: float) -> None:
        """Stop accepting; finish active and waiting requests within `timeout`."""
        with self._lock:
            self.gate.closed = True
            self._work.notify()
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            with self._lock:
                self._abandon = True
                self._work.notify()
            await asyncio.to_thread(self._thread.join, 10)  # the step in progress ends first
            for r in self._waiting + self.engine.active:
                if not r.future.done():
                    r.future.set_exception(ShuttingDown("shutdown drain bound reached"))
        with contextlib.suppress(Exception):
            self.metrics.active_sequences.labels(self.name).set(0)
