"""OpenTelemetry traces: off unless an OTLP endpoint is set (or the app is given a tracer provider, as the tests do).

A request is a trace: its server span (REST: the ASGI instrumentation; gRPC: `service.api.grpc_v2`) with child
spans for parsing, the queue wait and the response. The batch a request ran in is one span of its own, a child of
the first traced request in it, linked to every traced request in it; each request's queue-wait span links back to
it. For the iteration scheduler (translators, language models) the batched compute is the admission round (the
encoder or prompt pass of the requests admitted together) and each request gets a `decode` span from admission to
its answer: a span per decoder step would cost more than the step.

Off, the request path pays one test of a module global per hook (`enabled()`); nothing is created or exported.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Tracer

_tracer: Tracer | None = None
# monotonic seconds -> epoch nanoseconds (the queue records monotonic times; spans take epoch ones)
_EPOCH_OFFSET_NS = time.time_ns() - time.monotonic_ns()


def configure(tracer: Tracer | None) -> None:
    """Turn tracing on (a tracer) or off (None) for this process."""
    global _tracer
    _tracer = tracer


def enabled() -> bool:
    return _tracer is not None


def tracer() -> Tracer:
    assert _tracer is not None, "tracing is off"
    return _tracer


def epoch_ns(monotonic_s: float) -> int:
    return int(monotonic_s * 1e9) + _EPOCH_OFFSET_NS


def current() -> Span | None:
    """The caller's span when tracing is on and it is sampled (what a queued item carries), else None."""
    if _tracer is None:
        return None
    span = trace.get_current_span()
    return span if span.is_recording() else None


def annotate(model: str, version: int) -> None:
    """Name the model (and version) a request reached on its span."""
    current_span = trace.get_current_span()
    if current_span.is_recording():
        current_span.set_attributes({"seqserve.model": model, "seqserve.model_version": version})


def span(name: str, **attributes: Any) -> Any:
    """A child span of the current one for the `with` block, when there is a sampled current span."""
    if _tracer is None or not trace.get_current_span().is_recording():
        return nullcontext()
    return _tracer.start_as_current_span(name, attributes=attributes or None)


def batch_started(name: str, model: str, parents: Sequence[tuple[Span, float]], start: float,
                  **attributes: Any) -> Span | None:
    """At the start of a batch's compute: a queue-wait span per traced request (from its admission, `(span,
    enqueued)` in `parents`, to `start`) and the batch's span, which the caller ends. None when none is traced."""
    if _tracer is None or not parents:
        return None
    start_ns = epoch_ns(start)
    first = trace.set_span_in_context(parents[0][0])
    batch = _tracer.start_span(name, context=first, start_time=start_ns,
                               links=[Link(p.get_span_context()) for p, _ in parents],
                               attributes={"seqserve.model": model, "seqserve.batch.traced_requests": len(parents),
                                           **attributes})
    link = [Link(batch.get_span_context())]
    for parent, enqueued in parents:
        wait = _tracer.start_span("queue", context=trace.set_span_in_context(parent), start_time=epoch_ns(enqueued),
                                  links=link, attributes={"seqserve.model": model})
        wait.end(end_time=start_ns)
    return batch


def interval(name: str, parent: Span, start: float, end: float, **attributes: Any) -> None:
    """A finished span under `parent`, from `start` to `end` (monotonic seconds)."""
    if _tracer is None:
        return
    done = _tracer.start_span(name, context=trace.set_span_in_context(parent), start_time=epoch_ns(start),
                              attributes=attributes or None)
    done.end(end_time=epoch_ns(end))


@contextmanager
def server_span(name: str, carrier: dict[str, str], **attributes: Any) -> Iterator[Span | None]:
    """A server span, the current one for the block, continuing the W3C `traceparent` in `carrier` when there is
    one (the ASGI instrumentation does this for REST)."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.propagate import extract

    with _tracer.start_as_current_span(name, context=extract(carrier), kind=SpanKind.SERVER,
                                       attributes=attributes or None) as started:
        yield started
