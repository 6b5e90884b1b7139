"""Iteration-level (continuous) batching for translators, after Orca.

Each iteration: admit waiting requests FIFO while rows and source tokens fit (their encoder runs
together), make one decoder-step call over every active hypothesis of every active request, then
answer the requests that finished. Encoder outputs live in preallocated slot buffers, so admitting
a request writes only its own slot. The policy (`plan_admission`, `plan_retirement`) is pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.batcher import DeadlineExceeded, ShuttingDown, check_admission
from service.decoding import Search, Seq2SeqRunner, advance_searches, step_candidates
from service.metrics import Metrics
from service.text import pad_batch
from service.translator import DecodeOptions, Translation, TranslatorRuntime

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


@dataclass
class SeqRequest:
    src_ids: list[int]
    options: DecodeOptions
    enqueued: float
    deadline: float | None
    future: asyncio.Future[Translation]
    on_tokens: Callable[[list[int]], None] | None = None  # certain target ids so far (streaming)
    slot: int = -1
    search: Search | None = None
    sent: int = 0  # certain tokens already reported

    @property
    def gone(self) -> bool:
        return self.future.done()


class SlotBuffers:
    """Preallocated per-request encoder outputs: (slots, max source length, width)."""

    def __init__(self, slots: int, max_src: int) -> None:
        self.slots, self.max_src = slots, max_src
        self.free = list(range(slots - 1, -1, -1))
        self.arrays: dict[str, np.ndarray] = {}
        self.lengths = np.zeros(slots, dtype=np.int64)

    def put(self, name: str, slot: int, value: np.ndarray) -> None:
        if name not in self.arrays:
            self.arrays[name] = np.zeros((self.slots, self.max_src, *value.shape[1:]), dtype=value.dtype)
        self.arrays[name][slot, : value.shape[0]] = value
        self.arrays[name][slot, value.shape[0]:] = 0

    def gather(self, name: str, slots: np.ndarray, width: int) -> np.ndarray | None:
        array = self.arrays.get(name)
        return None if array is None else array[slots, :width]  # (R, width, ...)


class DecodeEngine:
    """The decoding state; touched only from the compute thread, one iteration at a time."""

    def __init__(self, runtime: TranslatorRuntime, slots: int, metrics: Metrics, name: str) -> None:
        self.runner: Seq2SeqRunner = runtime.runner
        self.runtime, self.metrics, self.name = runtime, metrics, name
        self.buffers = SlotBuffers(slots, runtime.source.max_length)
        self.active: list[SeqRequest] = []
        self.states: dict[str, np.ndarray] = {}
        self._context_key: tuple[bytes, int] | None = None
        self._context: tuple[Any, Any, Any] = (None, None, None)

    @property
    def rows(self) -> int:
        return sum(r.search.rows for r in self.active if r.search is not None)

    @property
    def src_tokens(self) -> int:
        return sum(len(r.src_ids) for r in self.active)

    def drop(self, leaving: list[SeqRequest]) -> None:
        """Remove requests (finished or gone) and their rows; their slots become free."""
        if not leaving:
            return
        keep_rows: list[int] = []
        at = 0
        for r in self.active:
            n = r.search.rows if r.search is not None else 0
            if r not in leaving:
                keep_rows.extend(range(at, at + n))
            at += n
        index = np.array(keep_rows, dtype=np.int64)
        self.states = {k: v[index] for k, v in self.states.items()}
        for r in leaving:
            self.buffers.free.append(r.slot)
        self.active = [r for r in self.active if r not in leaving]

    def admit(self, admitted: list[SeqRequest]) -> None:
        """Encode the newly admitted requests together and give each a slot and its first rows."""
        if not admitted:
            return
        self._context_key = None  # slots are reused: a cached gather may hold a finished request's rows
        ids, lengths = pad_batch([r.src_ids for r in admitted])
        encoded = self.runner.encode(ids, lengths)
        new_states: dict[str, list[np.ndarray]] = {k: [] for k in encoded.states}
        for i, r in enumerate(admitted):
            r.slot = self.buffers.free.pop()
            n = int(lengths[i])
            self.buffers.put("memory", r.slot, encoded.memory[i, :n])
            if encoded.keys is not None:
                self.buffers.put("keys", r.slot, encoded.keys[i, :n])
            self.buffers.lengths[r.slot] = n
            r.search = r.options.factory()(n)
            for k, v in encoded.states.items():
                new_states[k].append(np.repeat(v[i: i + 1], r.search.rows, axis=0))
        for k, parts in new_states.items():
            self.states[k] = np.concatenate([self.states[k], *parts]) if k in self.states else np.concatenate(parts)
        self.active.extend(admitted)

    def _context_for(self, row_slots: np.ndarray) -> tuple[Any, Any, Any]:
        width = int(self.buffers.lengths[np.unique(row_slots)].max())
        key = (row_slots.tobytes(), width)
        if key != self._context_key:  # the same rows as last step: reuse the gathered copy
            mask = np.arange(width)[None, :] < self.buffers.lengths[row_slots][:, None]  # (R, S)
            self._context = (self.buffers.gather("memory", row_slots, width),
                             self.buffers.gather("keys", row_slots, width), mask)
            self._context_key = key
        return self._context

    def step(self) -> list[SeqRequest]:
        """One decoder call for every active row; returns the requests that finished."""
        stepping = [r for r in self.active if r.search is not None and r.search.rows]
        if not stepping:
            return []
        searches = [r.search for r in stepping if r.search is not None]
        row_slots = np.repeat([r.slot for r in stepping], [s.rows for s in searches])
        memory, keys, mask = self._context_for(row_slots)
        tokens = np.concatenate([s.tokens() for s in searches])  # (R,)
        self.metrics.batch_size.labels(self.name).observe(len(tokens))  # rows in this decoder step
        start = time.perf_counter()
        step = self.runner.step(tokens, memory, keys, mask, self.states, step_candidates(searches))
        self.metrics.decode_step.labels(self.name).observe(time.perf_counter() - start)
        follow = advance_searches(searches, step, [int(self.buffers.lengths[r.slot]) for r in stepping])
        self.states = {k: v[follow] for k, v in step.states.items()}
        self.metrics.generated_tokens.labels(self.name).inc(len(stepping))
        return [r for r in stepping if r.search is not None and r.search.done]


class ContinuousScheduler:
    """The asyncio side: a bounded FIFO waiting queue, and a loop that runs one iteration at a time."""

    def __init__(self, name: str, runtime: TranslatorRuntime, metrics: Metrics, max_rows: int,
                 max_src_tokens: int, max_queue: int) -> None:
        self.name, self.runtime, self.metrics = name, runtime, metrics
        self.max_rows, self.max_src_tokens, self.max_queue = max_rows, max_src_tokens, max_queue
        self.engine = DecodeEngine(runtime, slots=max_rows, metrics=metrics, name=name)
        self._waiting: list[SeqRequest] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"decode-{name}")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"scheduler-{name}")
        metrics.queue_capacity.labels(name).set(max_queue)

    @property
    def depth(self) -> int:
        return len(self._waiting)

    def submit(self, payloads: Sequence[Any], lengths: Sequence[int], deadline: float | None = None,
               on_tokens: Callable[[list[int]], None] | None = None) -> list[asyncio.Future[Any]]:
        """Queue every item (TranslateItem) or none; one future per item."""
        check_admission(self.name, self._closed, len(self._waiting) + len(payloads), self.max_queue)
        loop, now = asyncio.get_running_loop(), time.monotonic()
        futures: list[asyncio.Future[Any]] = []
        for item in payloads:
            future: asyncio.Future[Translation] = loop.create_future()
            self._waiting.append(SeqRequest(item.src_ids, item.options, now, deadline, future, on_tokens))
            futures.append(future)
        self.metrics.queue_depth.labels(self.name).set(len(self._waiting))
        self._wake.set()
        return futures

    def _admission(self) -> list[SeqRequest]:
        engine = self.engine
        plan = plan_admission(
            [Candidate(r.options.beam_size, len(r.src_ids), r.deadline, r.gone) for r in self._waiting],
            self.max_rows - engine.rows, self.max_src_tokens - engine.src_tokens, len(engine.buffers.free),
            time.monotonic(), idle=not engine.active)
        for i in plan.expired:
            self._waiting[i].future.set_exception(DeadlineExceeded("deadline passed before compute; work skipped"))
        if plan.expired:
            self.metrics.rejections.labels(self.name, "deadline").inc(len(plan.expired))
        if plan.gone:
            self.metrics.rejections.labels(self.name, "client_gone").inc(len(plan.gone))
        admitted = [self._waiting[i] for i in plan.admit]
        leaving = set(plan.admit) | set(plan.expired) | set(plan.gone)
        self._waiting = [r for i, r in enumerate(self._waiting) if i not in leaving]
        now = time.monotonic()
        for r in admitted:
            self.metrics.queue_wait.labels(self.name).observe(now - r.enqueued)
        return admitted

    def _iterate(self, admitted: list[SeqRequest]) -> list[SeqRequest]:
        """Compute thread: drop gone requests, encode the admitted, one decoder step."""
        gone = [r for r in self.engine.active if r.gone]
        if gone:
            self.engine.drop(gone)
            self.metrics.rejections.labels(self.name, "client_gone").inc(len(gone))
        self.engine.admit(admitted)
        finished = self.engine.step()
        self.engine.drop(finished)
        return finished

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            admitted = self._admission()
            self.metrics.queue_depth.labels(self.name).set(len(self._waiting))
            if not admitted and not self.engine.active:
                if self._closed and not self._waiting:
                    return
                self._wake.clear()
                if not self._waiting:
                    await self._wake.wait()
                else:  # waiting but nothing admitted (cannot happen when idle): yield and look again
                    await asyncio.sleep(0.001)
                continue
            stepping = self.engine.active + admitted
            try:
                finished = await loop.run_in_executor(self._executor, self._iterate, admitted)
            except Exception as exc:  # a failed step fails the requests in it; the scheduler goes on
                log.exception("decode iteration failed on model %s", self.name)
                for r in stepping:
                    if not r.future.done():
                        r.future.set_exception(exc)
                self.engine = DecodeEngine(self.runtime, self.max_rows, self.metrics, self.name)
                continue
            self._report(stepping, finished)

    def _report(self, stepping: list[SeqRequest], finished: list[SeqRequest]) -> None:
        now = time.monotonic()
        for r in stepping:
            if r.search is None or r.gone:
                continue
            certain = r.search.certain()
            if len(certain) > r.sent:
                if r.sent == 0:
                    self.metrics.time_to_first_token.labels(self.name).observe(now - r.enqueued)
                r.sent = len(certain)
                if r.on_tokens is not None:
                    r.on_tokens(certain)
        for r in finished:
            assert r.search is not None
            hyp = r.search.result()
            self.metrics.tokens_per_request.labels(self.name).observe(len(hyp.tokens))
            if not r.future.done():
                r.future.set_result(self.runtime.finish(r.src_ids, hyp))
        self.metrics.active_sequences.labels(self.name).set(len(self.engine.active))
        self.metrics.active_rows.labels(self.name).set(self.engine.rows)

    async def close(self, timeout: float) -> None:
        """Stop accepting; finish active and waiting requests within `timeout`."""
        self._closed = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            for r in self._waiting + self.engine.active:
                if not r.future.done():
                    r.future.set_exception(ShuttingDown("shutdown drain bound reached"))
        self._executor.shutdown(wait=False)
        with contextlib.suppress(Exception):
            self.metrics.active_sequences.labels(self.name).set(0)
