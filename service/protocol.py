"""uvicorn's httptools HTTP/1.1 protocol with the limits it lacks, enforced while the request head is read:

- a connection must begin a request within `idle_timeout_s` of opening, as between requests (uvicorn's
  keep-alive timeout only starts after a response: a connection that sends nothing stayed open for ever);
- a request's head (request line and headers) must be complete within `header_timeout_s` of its first byte,
  else 408 and the connection is closed (a client sending half its headers held the connection for ever);
- a head larger than `max_header_bytes` is refused with 431 as soon as that many bytes have come, not buffered
  whole first (the application's own 431 checks then see only heads under the limit);
- `max_connections` connections at a time hold a place (the first to come, as places free); a request on any
  other is answered 503 with Retry-After and its connection closed, before the process runs out of file
  descriptors (where new connections would fail with no answer at all).

The body's time limit and the header-count limit are the middleware's (`service.api.middleware`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_SLACK = 8 * 1024  # the request line and the line breaks, on top of the header names and values


def guarded_protocol(header_timeout_s: float, max_header_bytes: int, max_connections: int, retry_after_s: int,
                     refused: Callable[[str], None] | None = None) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...), with these limits; `refused(reason)` counts each refusal."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                {"header_timeout_s": header_timeout_s, "max_head_bytes": max_header_bytes + HEAD_SLACK,
                 "max_connections": max_connections, "retry_after": str(retry_after_s).encode(),
                 "refused": staticmethod(refused or (lambda reason: None))})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s = 10.0
    max_head_bytes = 16 * 1024 + HEAD_SLACK
    max_connections = 1_000_000
    retry_after = b"1"
    refused: Callable[[str], None] = staticmethod(lambda reason: None)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._places: set[GuardedHttpToolsProtocol] = self.server_state.__dict__.setdefault("seqserve_places", set())
        self._take_place()
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes: int | None = None  # bytes of the head being read; None between requests
        # idle from the start, as after a response
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._places.discard(self)
        self._stop_head_timer()
        super().connection_lost(exc)

    def _take_place(self) -> bool:
        if self not in self._places and len(self._places) < self.max_connections:
            self._places.add(self)
        return self in self._places

    def on_message_begin(self) -> None:  # the parser met a request's first byte
        super().on_message_begin()
        self._stop_head_timer()
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_bytes is not None:  # these bytes began or went on with a head that is not complete yet
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(431, f"request head exceeds {self.max_head_bytes} bytes", "head_too_large")

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        self._head_bytes = None
        if not self._take_place():  # no place among max_connections: answered 503, then closed
            app, self.app = self.app, self._too_many_connections
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        super().on_headers_complete()

    async def _too_many_connections(self, scope: Any, receive: Any, send: Any) -> None:
        """503 once the body is in (a client still writing it would see a reset instead of the answer), with
        Retry-After and `connection: close`, which frees the connection (after header_timeout_s at most, even if the
        body is still coming)."""
        try:
            async with asyncio.timeout(self.header_timeout_s):  # a place-less connection is not held for long
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    more = message.get("more_body", False)
        except TimeoutError:
            pass  # answered all the same, and closed
        self.refused("no_connection_place")
        body = json.dumps({"error": f"more than max_connections={self.max_connections} open connections; "
                                    "retry later"}).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                                (b"retry-after", self.retry_after), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self._refuse(408, f"request headers not complete within {self.header_timeout_s:g} s", "head_timeout")

    def _refuse(self, status: int, message: str, reason: str) -> None:
        self._stop_head_timer()
        self._head_bytes = None
        if self.transport.is_closing():
            return
        self.refused(reason)
        phrase = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = json.dumps({"error": message}).encode()
        head: list[Any] = [b"HTTP/1.1 %d %s\r\n" % (status, phrase)]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)]
        self.logger.info("refused a request head: %s", message)
        self.transport.write(b"".join(head) + body)
        self.transport.close()
