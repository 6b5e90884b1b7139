"""The one request path every inference endpoint shares: validate -> encode -> queue -> await -> results."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from service.errors import UserError
from service.serving.served import ServedModel
from service.settings import Settings

log = logging.getLogger("seqserve.inference")
# The ASGI `receive` of the request: it says "http.disconnect" when the client leaves.
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


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


async def run_texts(model: ServedModel, texts: Sequence[str], options: Any, deadline: float | None,
                    receive: Receive, log_texts: bool = False) -> list[Any]:
    """Split the texts into the model's units (a translator's sentences), answer what the response cache holds,
    queue one item per other unit (all or none), wait for all, and drop the work if the client leaves."""
    units, plan = model.segment(texts, options)
    answers: list[Any] = [None] * len(units)
    cache = model.cache if model.cache is not None and model.cache.enabled and model.cacheable(options) else None
    keys = [cache.key(model.name, model.version, u, options) for u in units] if cache is not None else []
    missing = list(range(len(units)))
    if cache is not None:
        missing = []
        for i, key in enumerate(keys):
            hit, answers[i] = cache.get(key) if key is not None else (False, None)
            if not hit:
                missing.append(i)
    if missing:
        model.queue.check(len(missing))  # before tokenizing: under overload a 503 must stay cheap
        if log_texts:  # a debug setting: request texts stay out of logs otherwise
            log.info("texts for %s: %r", model.name, list(texts))
        payloads, lengths = model.prepare([units[i] for i in missing], options)
        futures = model.queue.submit(payloads, lengths, deadline)
        computed = await wait_or_disconnect(receive, futures)
        for i, answer in zip(missing, computed, strict=True):
            answers[i] = answer
            if cache is not None and keys[i] is not None:
                cache.put(keys[i], answer)  # type: ignore[arg-type]
    return model.combine(texts, answers, plan)


async def wait_or_disconnect(receive: Receive, futures: list[asyncio.Future[Any]]) -> list[Any]:
    """The futures' results; if the client disconnects first, their work is cancelled and ClientGone raised."""
    results: asyncio.Future[Any] = futures[0] if len(futures) == 1 else asyncio.gather(*futures)
    watcher = asyncio.get_running_loop().create_task(_disconnected(receive))
    watcher.add_done_callback(lambda w: None if w.cancelled() else results.cancel())
    try:
        answer = await results
    except asyncio.CancelledError:
        for f in futures:
            f.cancel()  # the queue drops cancelled items before compute and counts them
        if watcher.done() and not watcher.cancelled():
            raise ClientGone() from None
        raise  # this task itself was cancelled (shutdown)
    finally:
        watcher.cancel()
    return [answer] if len(futures) == 1 else list(answer)


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
