"""OpenTelemetry traces: off unless an OTLP endpoint is set (or the app is given a tracer provider, as the tests do).

A request is a trace: its server span (REST: `service.api.middleware`; gRPC: `service.api.grpc_v2`) with child
spans for parsing, the queue wait and the response. The batch a request ran in is one span of its own, a child of
the first traced request in it, linked to every traced request in it; each request's queue-wait span links back to
it. For the iteration scheduler (translators, language models) the batched compute is the admission round (the
encoder or prompt pass of the requests admitted together) and each request gets a `decode` span from admission to
its answer: a span per decoder step would cost more than the step.

Off, the request path pays one test of a module global per hook (`enabled()`); nothing is created or exported.
On, a request that is not sampled (and has no sampled parent) makes no span: one random number decides, before
the SDK is asked. (The OpenTelemetry ASGI instrumentation, tried first, cost a quarter of classification
throughput at 1 % sampling: it does its per-request work whether or not a request is sampled.)
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, StatusCode, Tracer

_tracer: Tracer | None = None
_ratio = 1.0  # share of new traces (no sampled parent) to start; the rest make no span at all
# monotonic seconds -> epoch nanoseconds (the queue records monotonic times; spans take epoch ones)
_EPOCH_OFFSET_NS = time.time_ns() - time.monotonic_ns()


def configure(tracer: Tracer | None, sample_ratio: float = 1.0) -> None:
    """Turn tracing on (a tracer) or off (None) for this process; `sample_ratio` of the requests that come without
    a parent are traced (decided before any span is made: an unsampled request costs one random number)."""
    global _tracer, _ratio
    _tracer, _ratio = tracer, sample_ratio


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


def start_server_span(name: str, carrier: dict[str, str], **attributes: Any) -> tuple[Span, object] | None:
    """A server span made the current one, continuing the W3C `traceparent` in `carrier` (lower-case keys) when
    there is one (whose sampled flag the provider's parent-based sampler follows); `end_server_span` ends it. A
    request without a parent is traced with probability `sample_ratio`; None for the others."""
    context = None
    if "traceparent" in carrier:
        from opentelemetry.propagate import extract

        context = extract(carrier)
    elif _ratio < 1.0 and random.random() >= _ratio:
        return None
    started = tracer().start_span(name, context=context, kind=SpanKind.SERVER, attributes=attributes or None)
    return started, otel_context.attach(trace.set_span_in_context(started))


def end_server_span(started: tuple[Span, object], status: int, name: str | None = None,
                    error: BaseException | None = None) -> None:
    """Ends a `start_server_span` span with the request's (HTTP) status, and its final name when one is given."""
    server, token = started
    otel_context.detach(token)  # type: ignore[arg-type]
    if server.is_recording():
        server.set_attribute("http.response.status_code", status)
        if name is not None:
            server.update_name(name)
        if error is not None:
            server.record_exception(error)
        if status >= 500:
            server.set_status(StatusCode.ERROR)
    server.end()


@contextmanager
def server_span(name: str, carrier: dict[str, str], **attributes: Any) -> Iterator[Span | None]:
    """`start_server_span` for a `with` block (None when tracing is off or the request is not traced); the status
    is the caller's to set."""
    started = start_server_span(name, carrier, **attributes) if _tracer is not None else None
    if started is None:
        yield None
        return
    server, token = started
    try:
        yield server
    except BaseException as exc:
        if server.is_recording():
            server.record_exception(exc)
        raise
    finally:
        otel_context.detach(token)  # type: ignore[arg-type]
        server.end()
