"""Iteration-level (continuous) batching, after Orca, for every decoding kind (translators, language models).

Each iteration: admit waiting requests FIFO while rows and input tokens fit (their prompts or sources run
together), make one step call over every active row of every active request, then answer the requests that
finished. What a kind does at admission and at each step is its `IterationEngine` (`batching/seq2seq.py`,
`batching/lm.py`); the queue, admission, deadlines, disconnects, streams, metrics and shutdown are here, once.
The policy (`plan_admission`, `plan_retirement`) is pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from service import tracing
from service.batching.queue import DeadlineExceeded, Gate, OnTokens, ShuttingDown
from service.metrics import Metrics

log = logging.getLogger("seqserve.scheduler")


@dataclass(frozen=True)
class Candidate:
    """What admission needs to know about one waiting request."""

    rows: int  # step rows it will need (a translator's beam size)
    src_tokens: int  # input tokens its admission runs (a source, a prompt)
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
    item: Any  # what the served model prepared (a translator's TranslateItem, a language model's LMItem)
    enqueued: float
    deadline: float | None
    future: asyncio.Future[Any] | None  # None in a static batch, which has no per-request answer
    on_tokens: OnTokens | None = None  # certain output ids so far (streaming)
    first_row: int = -1  # its rows in the engine: [first_row, first_row + rows)
    rows: int = 0
    search: Any = None  # the engine's per-request state (a search, a sampler)
    sent: int = 0  # certain tokens already reported
    stepped: bool = False  # had its first step
    span: Any = None  # the request's span, when it is traced
    admitted: float = 0.0  # when it left the queue

    @property
    def gone(self) -> bool:
        return self.future is not None and self.future.done()


class IterationEngine(Protocol):
    """A decoding kind's state between iterations; touched only from the scheduler's thread."""

    active: list[SeqRequest]  # admitted and not yet dropped, in row order

    @property
    def rows(self) -> int:
        """Step rows the active requests hold."""
        ...

    @property
    def tokens(self) -> int:
        """Input tokens the active requests hold (the admission budget)."""
        ...

    def cost(self, item: Any) -> tuple[int, int]:
        """(rows, input tokens) a waiting request will take once admitted."""
        ...

    def admit(self, admitted: list[SeqRequest]) -> None:
        """Run the admitted requests' inputs together and give each its rows."""
        ...

    def step(self) -> list[SeqRequest]:
        """One step call for every active row; -> the requests that finished (they stay until `drop`)."""
        ...

    def drop(self, leaving: list[SeqRequest]) -> None: ...

    def finish(self, r: SeqRequest) -> Any:
        """A finished request's answer."""
        ...

    def certain(self, r: SeqRequest) -> list[int]:
        """The output ids every possible answer of `r` starts with (what a stream may send)."""
        ...

    def fresh(self) -> IterationEngine:
        """An empty engine like this one (after a failed step)."""
        ...


def run_static(engine: IterationEngine, items: Sequence[Any]) -> list[Any]:
    """A static batch on an engine of its own: every item admitted at once, stepped until the last has finished (the
    `static` and `none` scheduler modes of a kind that has no batch decoder of its own)."""
    requests = [SeqRequest(item, 0.0, None, None) for item in items]
    engine.admit(requests)
    results: dict[int, Any] = {}
    while engine.active:
        finished = engine.step()
        results.update((id(r), engine.finish(r)) for r in finished)
        engine.drop(finished)
    return [results[id(r)] for r in requests]


class ContinuousScheduler:
    """A bounded FIFO waiting queue (event-loop side) and a decode thread that runs iterations back to back.

    The thread never waits for the event loop: it admits, steps and answers on its own, handing results and
    stream tokens to the loop with `call_soon_threadsafe`, so HTTP work on the loop and decoding overlap.
    """

    def __init__(self, name: str, engine: IterationEngine, metrics: Metrics, max_rows: int, max_tokens: int,
                 max_queue: int) -> None:
        self.name, self.metrics = name, metrics
        self.max_rows, self.max_tokens, self.max_queue = max_rows, max_tokens, max_queue
        self.engine = engine
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
        """Queue every item (what the served model prepared) or none; one future per item."""
        now, span = time.monotonic(), tracing.current()
        with self._lock:
            self.gate.check(len(self._waiting), len(payloads))
            futures: list[asyncio.Future[Any]] = []
            for item in payloads:
                future: asyncio.Future[Any] = self._loop.create_future()
                self._waiting.append(SeqRequest(item, now, deadline, future, on_tokens, span=span))
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
                    self.engine = self.engine.fresh()
                    continue
                self._report(finished)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                self._loop.call_soon_threadsafe(self._stopped.set)

    def _admission(self) -> list[SeqRequest]:
        """Under the lock: apply the FIFO policy to the waiting queue."""
        engine = self.engine
        plan = plan_admission(
            [Candidate(*engine.cost(r.item), r.deadline, r.gone) for r in self._waiting],
            self.max_rows - engine.rows, self.max_tokens - engine.tokens, self.max_rows - len(engine.active),
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
            r.admitted = now
        return admitted

    def _iterate(self, admitted: list[SeqRequest]) -> list[tuple[SeqRequest, Any]]:
        """Drop requests whose client has gone, run the admitted inputs, one step; -> the finished."""
        gone = [r for r in self.engine.active if r.gone]
        if gone:
            self.engine.drop(gone)
            self.metrics.rejections.labels(self.name, "client_gone").inc(len(gone))
        span = tracing.batch_started("admit", self.name, [(r.span, r.enqueued) for r in admitted if r.span is not None],
                                     admitted[0].admitted, **{"seqserve.batch.size": len(admitted)}) \
            if admitted and tracing.enabled() else None
        try:
            self.engine.admit(admitted)
            finished = self.engine.step()
        finally:
            if span is not None:
                span.end()
        self.engine.drop(finished)
        return [(r, self.engine.finish(r)) for r in finished]

    def _report(self, finished: list[tuple[SeqRequest, Any]]) -> None:
        """Time to first token, new certain tokens to streams, answers to the finished."""
        now = time.monotonic()
        for r in self.engine.active:
            if r.search is None or r.gone:
                continue
            if r.on_tokens is None:  # a plain request: its first step made its first token
                if not r.stepped:
                    r.stepped = True
                    self.metrics.time_to_first_token.labels(self.name).observe(now - r.enqueued)
                continue
            self._stream(r, self.engine.certain(r), now)
        for r, result in finished:
            if r.span is not None:
                tracing.interval("decode", r.span, r.admitted, now, **{"seqserve.model": self.name})
            if r.on_tokens is not None:
                self._stream(r, self.engine.certain(r), now)
            elif not r.stepped:
                self.metrics.time_to_first_token.labels(self.name).observe(now - r.enqueued)
            self._answer(r.future, result)
        self.metrics.active_sequences.labels(self.name).set(len(self.engine.active))
        self.metrics.active_rows.labels(self.name).set(self.engine.rows)

    def _stream(self, r: SeqRequest, certain: list[int], now: float) -> None:
        if len(certain) > r.sent and r.on_tokens is not None:
            if r.sent == 0:
                self.metrics.time_to_first_token.labels(self.name).observe(now - r.enqueued)
            r.sent = len(certain)
            self._loop.call_soon_threadsafe(r.on_tokens, list(certain))

    def _answer(self, future: asyncio.Future[Any] | None, result: Any = None,
                error: BaseException | None = None) -> None:
        """Resolve a future from the decode thread (unless its client has gone meanwhile)."""

        def resolve() -> None:
            if future is None or future.done():
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
                if r.future is not None and not r.future.done():
                    r.future.set_exception(ShuttingDown("shutdown drain bound reached"))
        with contextlib.suppress(Exception):
            self.metrics.active_sequences.labels(self.name).set(0)
