"""Model-agnostic dynamic batching: a pure policy (`plan_batch`) and a thin asyncio loop around it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from service import tracing
from service.batching.queue import DeadlineExceeded, Gate, OnTokens, ShuttingDown
from service.metrics import Metrics

log = logging.getLogger("seqserve.batcher")


@dataclass(frozen=True)
class Waiting:
    """What the policy needs to know about one queued item."""

    length: int
    enqueued: float
    deadline: float | None = None
    gone: bool = False


@dataclass(frozen=True)
class Plan:
    take: list[int]  # queue positions to run now, or empty to wait
    expired: list[int] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)
    wake_at: float | None = None  # when to look again if nothing was taken


def plan_batch(queue: Sequence[Waiting], now: float, max_batch_size: int, max_delay: float) -> Plan:
    """Which queued items form the next batch.

    Items whose client has gone or whose deadline passed are dropped first. A batch goes when it
    is full or the oldest item has waited `max_delay`. It always holds the oldest item (no
    starvation) and, among the rest, the items closest to it in length, so padding stays small.
    """
    gone = [i for i, w in enumerate(queue) if w.gone]
    expired = [i for i, w in enumerate(queue) if not w.gone and w.deadline is not None and w.deadline <= now]
    dropped = set(gone) | set(expired)
    live = [i for i in range(len(queue)) if i not in dropped]
    if not live:
        return Plan([], expired, gone)
    oldest = live[0]
    if len(live) < max_batch_size and now - queue[oldest].enqueued < max_delay:
        return Plan([], expired, gone, wake_at=queue[oldest].enqueued + max_delay)
    if len(live) <= max_batch_size:
        return Plan(live, expired, gone)
    window = sorted(live[: 8 * max_batch_size], key=lambda i: (queue[i].length, i))
    at = window.index(oldest)
    best = min(range(max(0, at - max_batch_size + 1), min(at, len(window) - max_batch_size) + 1),
               key=lambda s: (queue[window[s + max_batch_size - 1]].length - queue[window[s]].length, s))
    return Plan(sorted(window[best:best + max_batch_size]), expired, gone)


@dataclass
class _Item:
    payload: Any
    length: int
    enqueued: float
    deadline: float | None
    future: asyncio.Future[Any]
    span: Any = None  # the request's span, when it is traced


class DynamicBatcher:
    """One per model version: a bounded queue, a background task, one compute thread."""

    def __init__(self, name: str, run: Callable[[list[Any]], list[Any]], metrics: Metrics, max_batch_size: int,
                 max_delay_s: float, max_queue: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.run, self.metrics, self.clock = name, run, metrics, clock
        self.max_batch_size, self.max_delay_s, self.max_queue = max_batch_size, max_delay_s, max_queue
        self._queue: list[_Item] = []
        self._wake = asyncio.Event()
        self.gate = Gate(name, max_queue, metrics)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{name}")

    @property
    def depth(self) -> int:
        return len(self._queue)

    def check(self, count: int) -> None:
        self.gate.check(len(self._queue), count)

    def submit(self, payloads: Sequence[Any], lengths: Sequence[int], deadline: float | None = None,
               on_tokens: OnTokens | None = None) -> list[asyncio.Future[Any]]:
        """Queue every payload or none (all-or-nothing admission); one future per payload. Results come whole,
        once per batch, so `on_tokens` is never called."""
        self.gate.check(len(self._queue), len(payloads))
        loop, now, span = asyncio.get_running_loop(), self.clock(), tracing.current()
        futures = []
        for payload, length in zip(payloads, lengths, strict=True):
            item = _Item(payload, length, now, deadline, loop.create_future(), span)
            self._queue.append(item)
            futures.append(item.future)
        self.metrics.queue_depth.labels(self.name).set(len(self._queue))
        self._wake.set()
        return futures

    async def _loop(self) -> None:
        while True:
            plan = plan_batch([Waiting(i.length, i.enqueued, i.deadline, i.future.done()) for i in self._queue],
                              self.clock(), self.max_batch_size, self.max_delay_s)
            batch = self._take(plan)
            if batch:
                await self._execute(batch)
                continue
            if self.gate.closed and not self._queue:
                return
            self._wake.clear()
            timeout = None if plan.wake_at is None else max(0.0, plan.wake_at - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _take(self, plan: Plan) -> list[_Item]:
        for i in plan.expired:
            self._queue[i].future.set_exception(DeadlineExceeded("deadline passed before compute; work skipped"))
        if plan.expired:
            self.metrics.rejections.labels(self.name, "deadline").inc(len(plan.expired))
        if plan.gone:
            self.metrics.rejections.labels(self.name, "client_gone").inc(len(plan.gone))
        chosen = set(plan.take)
        batch = [self._queue[i] for i in plan.take]
        removed = chosen | set(plan.expired) | set(plan.gone)
        self._queue = [item for i, item in enumerate(self._queue) if i not in removed]
        self.metrics.queue_depth.labels(self.name).set(len(self._queue))
        return batch

    async def _execute(self, batch: list[_Item]) -> None:
        start = self.clock()
        for item in batch:
            self.metrics.queue_wait.labels(self.name).observe(start - item.enqueued)
        self.metrics.batch_size.labels(self.name).observe(len(batch))
        span = tracing.batch_started("batch", self.name, [(i.span, i.enqueued) for i in batch if i.span is not None],
                                     start, **{"seqserve.batch.size": len(batch)}) if tracing.enabled() else None
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.run, [item.payload for item in batch])
        except Exception as exc:  # a failed batch fails each of its requests; the loop goes on
            log.exception("batch of %d failed on model %s", len(batch), self.name)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self.metrics.inference.labels(self.name).observe(self.clock() - start)
            if span is not None:
                span.end()
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    async def close(self, timeout: float) -> None:
        """Stop accepting, finish what is queued within `timeout`, then stop the thread."""
        self.gate.closed = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            log.warning("model %s: %d queued texts not finished within %.1fs", self.name, len(self._queue), timeout)
            self._task.cancel()
            for item in self._queue:
                if not item.future.done():
                    item.future.set_exception(ShuttingDown("shutdown drain bound reached"))
        self._executor.shutdown(wait=False)
