"""The one request path every inference endpoint shares: validate -> encode -> queue -> await -> results."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import Request

from service.batcher import DeadlineExceeded, QueueFull, ShuttingDown
from service.errors import UserError
from service.metrics import Metrics
from service.served import ServedModel
from service.settings import Settings

log = logging.getLogger("seqserve.inference")


class InvalidInput(UserError):
    """422: the request is well-formed but its content is not acceptable."""


class TooLarge(UserError):
    """413: the request exceeds a configured limit (the message names it)."""


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its work was dropped."""


def check_texts(texts: Sequence[Any], settings: Settings) -> list[str]:
    """Empty or whitespace-only texts are refused with 422 (they carry nothing to classify or translate)."""
    if len(texts) > settings.max_texts_per_request:
        raise TooLarge(f"{len(texts)} texts in one request exceeds max_texts_per_request="
                       f"{settings.max_texts_per_request}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInput(f"texts[{i}] must be a string")
        if len(text) > settings.max_chars_per_text:
            raise TooLarge(f"texts[{i}] has {len(text)} characters; max_chars_per_text={settings.max_chars_per_text}")
        if not text.strip():
            raise InvalidInput(f"texts[{i}] is empty or whitespace only")
        if "\x00" in text:
            raise InvalidInput(f"texts[{i}] contains a NUL character")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"texts[{i}] is not valid Unicode (a lone surrogate)") from None
    return list(texts)


def deadline_from(request: Request, settings: Settings, timeout_s: float | None = None) -> float | None:
    """An absolute monotonic deadline from X-Timeout-Ms, a v2 `timeout` parameter or the default."""
    header = request.headers.get("x-timeout-ms")
    if header is not None:
        try:
            timeout_s = float(header) / 1000
        except ValueError:
            raise InvalidInput(f"X-Timeout-Ms must be a number of milliseconds, got {header!r}") from None
    if timeout_s is None and settings.default_timeout_s > 0:
        timeout_s = settings.default_timeout_s
    if timeout_s is None:
        return None
    if timeout_s <= 0:
        raise InvalidInput("the timeout must be positive")
    return time.monotonic() + timeout_s


async def run_texts(request: Request, model: ServedModel, texts: Sequence[str], metrics: Metrics,
                    deadline: float | None, payload: Callable[[list[int]], Any] | None = None,
                    log_texts: bool = False) -> list[Any]:
    """Queue one item per text (all or none), wait for all, and drop the work if the client leaves.

    `payload` wraps a translator text's token ids with its decoding options."""
    request.state.model = model.name
    refuse_if_full(model, len(texts), metrics)  # before tokenizing: under overload a 503 must stay cheap
    if log_texts:  # a debug setting: request texts stay out of logs otherwise
        log.info("texts for %s: %r", model.name, list(texts))
    payloads, lengths = model.prepare(texts, payload)
    try:
        futures = model.queue.submit(payloads, lengths, deadline)
    except QueueFull:
        metrics.rejections.labels(model.name, "queue_full").inc()
        raise
    except ShuttingDown:
        metrics.rejections.labels(model.name, "shutting_down").inc()
        raise
    return await wait_or_disconnect(request, futures)


def refuse_if_full(model: ServedModel, count: int, metrics: Metrics) -> None:
    if model.queue.depth + count > model.queue.max_queue:
        metrics.rejections.labels(model.name, "queue_full").inc()
        raise QueueFull(f"model {model.name!r} queue is full ({model.queue.max_queue} texts)")


async def wait_or_disconnect(request: Request, futures: list[asyncio.Future[Any]]) -> list[Any]:
    """The futures' results; if the client disconnects first, their work is cancelled and ClientGone raised."""
    results: asyncio.Future[Any] = futures[0] if len(futures) == 1 else asyncio.gather(*futures)
    watcher = asyncio.get_running_loop().create_task(_disconnected(request))
    watcher.add_done_callback(lambda w: None if w.cancelled() else results.cancel())
    try:
        answer = await results
    except asyncio.CancelledError:
        for f in futures:
            f.cancel()  # the batcher drops cancelled items before compute and counts them
        if watcher.done() and not watcher.cancelled():
            raise ClientGone() from None
        raise  # this task itself was cancelled (shutdown)
    finally:
        watcher.cancel()
    return [answer] if len(futures) == 1 else list(answer)


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


__all__ = ["ClientGone", "DeadlineExceeded", "InvalidInput", "QueueFull", "TooLarge", "check_texts",
           "deadline_from", "run_texts"]
