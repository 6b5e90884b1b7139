"""Server-Sent Events for the decoding kinds' stream routes: one `token` event per new certain token, then `done` with
the whole result, or `error`; the client leaving cancels the request, so the scheduler frees its rows."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from service.api.body import deadline_from
from service.serving.served import ServedModel
from service.settings import Settings

log = logging.getLogger("seqserve.inference")

Decode = Callable[[list[int]], str]


def open_stream(request: Request, model: ServedModel, text: str, options: Any,
                events: Callable[[asyncio.Future[Any], asyncio.Queue[list[int]]], AsyncIterator[bytes]]
                ) -> StreamingResponse:
    """Queue one text with a callback for its certain tokens (the gate answers first: a 503 stays cheap) and stream
    the `events` made of its future and its updates."""
    settings: Settings = request.app.state.settings
    deadline = deadline_from(request, settings)
    model.queue.check(1)
    if settings.log_texts:
        log.info("stream text for %s: %r", model.name, text)
    items, lengths = model.prepare([text], options)
    updates: asyncio.Queue[list[int]] = asyncio.Queue()
    (future,) = model.queue.submit(items, lengths, deadline, on_tokens=updates.put_nowait)
    return StreamingResponse(events(future, updates), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class TokenStream:
    """Turns growing lists of certain token ids into one `token` event per new token, each with the text it adds
    (held back while it ends inside a UTF-8 character) and any `extra` fields for its index."""

    def __init__(self, decode: Decode, extra: Callable[[int], dict[str, Any]] | None = None) -> None:
        self.decode, self.extra, self.sent, self.shown = decode, extra, 0, ""

    def events(self, tokens: list[int], final_text: str | None = None) -> list[bytes]:
        """`final_text`: the finished result's text, which may stop short of its tokens' (a stop string)."""
        out = []
        for index in range(self.sent, len(tokens)):
            text = self.decode(tokens[: index + 1])
            if final_text is not None:
                text = text[: len(final_text)]
            complete = text.startswith(self.shown) and not text.endswith("\ufffd")
            delta = text[len(self.shown):] if complete else ""
            self.shown += delta
            fields = self.extra(index) if self.extra is not None else {}
            out.append(sse("token", {"index": index, "token_id": tokens[index], "text": delta, **fields}))
        self.sent = max(self.sent, len(tokens))
        return out


async def stream_events(future: asyncio.Future[Any], updates: asyncio.Queue[list[int]],
                        on_tokens: Callable[[list[int]], list[bytes]],
                        on_done: Callable[[Any], list[bytes]]) -> AsyncIterator[bytes]:
    """The events of one streamed request: its updates as they come, then its result's."""
    try:
        while not future.done() or not updates.empty():
            getter: asyncio.Future[list[int]] = asyncio.ensure_future(updates.get())
            waiting: list[asyncio.Future[Any]] = [getter, future]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                continue
            for event in on_tokens(getter.result()):
                yield event
        try:
            result = future.result()
        except Exception as exc:  # deadline, shutdown or a failed step: say so in the stream
            yield sse("error", {"error": str(exc) or type(exc).__name__})
            return
        for event in on_done(result):
            yield event
    finally:
        if not future.done():
            future.cancel()  # the client left: the scheduler frees its rows at the next iteration
