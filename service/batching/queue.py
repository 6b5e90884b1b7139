"""What every model queue shares: the protocol the serving layer calls, the admission gate, and its errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from service.metrics import Metrics

# Called (on the event loop) with every certain target id so far, each time more become certain.
OnTokens = Callable[[list[int]], None]


class Refused(Exception):
    """The queue did not take the request; the caller answers 503 with Retry-After."""

    reason = "refused"  # the `reason` label of seqserve_rejections_total


class QueueFull(Refused):
    """No room in the bounded queue for all of the request."""

    reason = "queue_full"


class ShuttingDown(Refused):
    """The model is being unloaded or the service is stopping and accepts no new work."""

    reason = "shutting_down"


class DeadlineExceeded(Exception):
    """The request's deadline passed before compute started; the work was skipped."""


class Gate:
    """The one admission rule of a model's queue, and the one place its refusals are counted: all of a
    request fits, or none of it is taken."""

    def __init__(self, name: str, max_queue: int, metrics: Metrics) -> None:
        self.name, self.max_queue, self.metrics = name, max_queue, metrics
        self.closed = False
        metrics.queue_capacity.labels(name).set(max_queue)

    def check(self, depth: int, count: int) -> None:
        """Raise, and count, the refusal when `count` more texts cannot all join the `depth` already waiting."""
        refused: Refused | None = None
        if self.closed:
            refused = ShuttingDown(f"model {self.name!r} is not accepting requests")
        elif depth + count > self.max_queue:
            refused = QueueFull(f"model {self.name!r} queue is full ({self.max_queue} texts)")
        if refused is not None:
            self.metrics.rejections.labels(self.name, refused.reason).inc()
            raise refused


class WorkQueue(Protocol):
    """A model version's queue: the dynamic batcher or the iteration-level scheduler."""

    gate: Gate

    @property
    def depth(self) -> int:
        """Texts waiting for compute."""
        ...

    def check(self, count: int) -> None:
        """The gate's answer for `count` more texts now (raises Refused), before any work is done for them."""
        ...

    def submit(self, payloads: Sequence[Any], lengths: Sequence[int], deadline: float | None = None,
               on_tokens: OnTokens | None = None) -> list[asyncio.Future[Any]]:
        """Queue every payload or none; one future per payload. `on_tokens` receives partial results where the
        queue makes them (iteration-level decoding); a queue that answers whole batches never calls it."""
        ...

    async def close(self, timeout: float) -> None: ...
