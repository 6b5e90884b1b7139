"""ASGI middleware: request ids, body limits, per-request metrics and access logs."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing
from service.api.errors import BodyTimeout, BodyTooLarge, internal_error
from service.metrics import Metrics

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
log = logging.getLogger("seqserve.access")
TRACED_PATHS = ("/v1/", "/v2/models", "/v2/repository")  # not health, metrics, docs or the demo page
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Generated ids: a random per-process prefix and a counter; unique like uuid4 without os.urandom per request.
_ID_PREFIX, _ID_COUNTER = uuid.uuid4().hex[:16], itertools.count()


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class RequestIdFilter(logging.Filter):
    """Adds request_id to every log record made while a request is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def _error(status: int, message: str, request_id: str,
           headers: list[tuple[bytes, bytes]] | None = None) -> tuple[Message, Message]:
    body = json.dumps({"error": message, "request_id": request_id}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"x-request-id", request_id.encode()), *(headers or [])]}
    return start, {"type": "http.response.body", "body": body}


# (scope, lower-cased headers) -> (model, message) when the request can only be refused for lack of room.
Shed = Callable[[Scope, dict[str, str]], "tuple[str, str] | None"]


class ServiceMiddleware:
    """Request id (X-Request-ID in and out), body size and encoding limits, metrics and access log.

    Under overload it also sheds load at the edge: a request whose every reachable queue is full gets its
    503 here, before the body is read or parsed, so refusing stays cheap while the loop is saturated.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, shed: Shed | None = None,
                 retry_after_s: int = 1, max_header_bytes: int = 16 * 1024, max_headers: int = 100,
                 body_timeout_s: float = 60.0) -> None:
        self.app, self.metrics, self.max_body_bytes, self.shed = app, metrics, max_body_bytes, shed
        self.max_header_bytes, self.max_headers = max_header_bytes, max_headers
        self.body_clock = _BodyClock(body_timeout_s)
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if REQUEST_ID_RE.match(given) else new_request_id()
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        start, status, status_sent, complete = time.perf_counter(), 500, False, False
        traced = tracing.start_server_span(f"{scope.get('method')} {scope.get('path')}", headers, **{
            "http.request.method": scope.get("method", ""), "url.path": scope.get("path", ""),
            "seqserve.request_id": request_id}) if tracing.enabled() and scope.get("path", "").startswith(
                TRACED_PATHS) else None
        failure: BaseException | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_sent, complete
            if message["type"] == "http.response.start":
                status, status_sent = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        try:
            problem = self._check_headers(scope["headers"]) or self._check(headers)
            if problem:
                status = problem[0]
                for message in _error(problem[0], problem[1], request_id):
                    await send(message)
                return
            shed = self.shed(scope, headers) if self.shed is not None else None
            if shed is not None:
                scope["state"]["model"], status = shed[0], 503
                for message in _error(503, shed[1], request_id, [(b"retry-after", self.retry_after)]):
                    await send(message)
                return
            await self.app(scope, self._limited(receive), send_with_id)
        except Exception as exc:  # errors we cause: logged with context, a 500 that carries the request id
            failure = exc
            log.error("unhandled %s on %s %s: %s", type(exc).__name__, scope.get("method"), scope.get("path"), exc,
                      exc_info=exc)
            if complete:  # the framework's handler has answered (500, in our shape)
                return
            if status_sent:
                raise
            status = 500
            for message in _error(500, internal_error(exc), request_id):
                await send(message)
        finally:
            endpoint = self._record(scope, status, time.perf_counter() - start)
            if traced is not None:
                tracing.end_server_span(traced, status, f"{scope.get('method')} {endpoint}", failure)
            request_id_var.reset(token)

    def _check_headers(self, raw: list[tuple[bytes, bytes]]) -> tuple[int, str] | None:
        """431 for more header lines, or more header bytes, than the limits (the HTTP parser sets none)."""
        if len(raw) > self.max_headers:
            return 431, f"{len(raw)} request headers exceed max_headers={self.max_headers}"
        size = sum(map(len, itertools.chain.from_iterable(raw)))
        if size > self.max_header_bytes:
            return 431, f"request headers of {size} bytes exceed max_header_bytes={self.max_header_bytes}"
        return None

    def _check(self, headers: dict[str, str]) -> tuple[int, str] | None:
        encoding = headers.get("content-encoding", "identity").lower()
        if encoding not in ("identity", ""):
            return 415, f"Content-Encoding {encoding!r} is not accepted; send an uncompressed body"
        length = headers.get("content-length")
        if length is not None and (not (length.isascii() and length.isdigit()) or int(length) > self.max_body_bytes):
            return 413, f"request body exceeds max_body_bytes={self.max_body_bytes}"
        return None

    def _limited(self, receive: Receive) -> Receive:
        return _Body(receive, self.max_body_bytes, self.body_clock).read

    def _record(self, scope: Scope, status: int, elapsed: float) -> str:
        """Counts the request, logs its access line; -> its endpoint label (the route's template)."""
        route: Any = scope.get("route")
        endpoint = getattr(route, "path", None) or scope.get("state", {}).get("endpoint", "unmatched")
        state = scope.get("state", {})
        model = state.get("model", "")
        if endpoint.startswith(("/v1/", "/v2/models")) or model:
            self.metrics.requests.labels(model, endpoint, str(status)).inc()
            self.metrics.request_latency.labels(model, endpoint).observe(elapsed)
            if status == 503:
                self.metrics.rejected_latency.labels(model, endpoint).observe(elapsed)
        if log.isEnabledFor(logging.INFO):
            log.info("%s %s %d %.1fms", scope.get("method"), endpoint, status, elapsed * 1000,
                     extra={"endpoint": endpoint, "method": scope.get("method"), "model": model,
                            "version": str(state.get("version", "")), "status": status,
                            "latency_ms": round(elapsed * 1000, 3)})
        return str(endpoint)


class _Body:
    """One request's body limits: its size (chunked bodies included) and the time it may take to arrive in full,
    from the first read (`_BodyClock` expires it). Reads after the body, which only listen for a disconnect, are
    not limited."""

    __slots__ = ("receive", "limit", "clock", "seen", "done", "expired", "started", "reader")

    def __init__(self, receive: Receive, limit: int, clock: _BodyClock) -> None:
        self.receive, self.limit, self.clock = receive, limit, clock
        self.seen, self.done, self.expired, self.started = 0, False, False, 0.0
        self.reader: asyncio.Task[Any] | None = None

    async def read(self) -> Message:
        if self.done:
            return await self.receive()
        if self.reader is None:
            self.reader, self.started = asyncio.current_task(), time.monotonic()
            self.clock.watch(self)
        try:
            message = await self.receive()
        except asyncio.CancelledError:
            if not self.expired:
                raise
            if self.reader is not None and hasattr(self.reader, "uncancel"):
                self.reader.uncancel()  # our own cancellation, answered as BodyTimeout: the task goes on
            raise BodyTimeout(self.clock.timeout) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.done = True
            self.clock.forget(self)
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                raise BodyTooLarge(self.limit)
        return message

    def expire(self) -> None:
        if not self.done and self.reader is not None:
            self.expired = True
            self.reader.cancel()


class _BodyClock:
    """Expires bodies that take longer than `timeout` to arrive. One ticker for all requests, running only while
    some body is still arriving: a request whose body is in pays two dict operations, not a timer."""

    def __init__(self, timeout: float) -> None:
        self.timeout, self.period = timeout, min(1.0, timeout / 4)
        self.arriving: dict[int, _Body] = {}
        self.ticking = False

    def watch(self, body: _Body) -> None:
        self.arriving[id(body)] = body
        if not self.ticking:
            self.ticking = True
            asyncio.get_running_loop().call_later(self.period, self._tick)

    def forget(self, body: _Body) -> None:
        self.arriving.pop(id(body), None)

    def _tick(self) -> None:
        now = time.monotonic()
        for key, body in list(self.arriving.items()):
            if now - body.started >= self.timeout:
                del self.arriving[key]
                body.expire()
        if self.arriving:
            asyncio.get_running_loop().call_later(self.period, self._tick)
        else:
            self.ticking = False
