"""ASGI middleware: request ids, body limits, per-request metrics and access logs."""

from __future__ import annotations

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

from service.api.errors import BodyTooLarge, internal_error
from service.metrics import Metrics

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
log = logging.getLogger("seqserve.access")
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
                 retry_after_s: int = 1) -> None:
        self.app, self.metrics, self.max_body_bytes, self.shed = app, metrics, max_body_bytes, shed
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
            problem = self._check(headers)
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
            self._record(scope, status, time.perf_counter() - start)
            request_id_var.reset(token)

    def _check(self, headers: dict[str, str]) -> tuple[int, str] | None:
        encoding = headers.get("content-encoding", "identity").lower()
        if encoding not in ("identity", ""):
            return 415, f"Content-Encoding {encoding!r} is not accepted; send an uncompressed body"
        length = headers.get("content-length")
        if length is not None and (not (length.isascii() and length.isdigit()) or int(length) > self.max_body_bytes):
            return 413, f"request body exceeds max_body_bytes={self.max_body_bytes}"
        return None

    def _limited(self, receive: Receive) -> Receive:
        """Counts bodies without Content-Length (chunked) against the same limit."""
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        return wrapped

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route: Any = scope.get("route")
        endpoint = getattr(route, "path", None) or scope.get("state", {}).get("endpoint", "unmatched")
        model = scope.get("state", {}).get("model", "")
        if endpoint.startswith(("/v1/", "/v2/models")) or model:
            self.metrics.requests.labels(model, endpoint, str(status)).inc()
            self.metrics.request_latency.labels(model, endpoint).observe(elapsed)
            if status == 503:
                self.metrics.rejected_latency.labels(model, endpoint).observe(elapsed)
        log.info("%s %s %d %.1fms", scope.get("method"), endpoint, status, elapsed * 1000)

