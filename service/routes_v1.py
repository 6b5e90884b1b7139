"""REST endpoints: POST /v1/classify and POST /v1/translate."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.deps import ManagerDep, MetricsDep, SettingsDep, require_inference_key
from service.inference import InvalidInput, check_texts, deadline_from, refuse_if_full, run_texts
from service.metrics import Metrics
from service.scheduler import ContinuousScheduler
from service.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ErrorBody,
    TranslateRequest,
    TranslateResponse,
    TranslateStreamRequest,
)
from service.served import TranslateItem
from service.settings import Settings
from service.translator import DecodeOptions, Translation

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in {
        400: "malformed body (not UTF-8 JSON)", 401: "missing or wrong API key",
        403: "endpoint disabled by configuration", 404: "unknown model or version", 413: "a size limit was exceeded",
        415: "body is not JSON, or is compressed", 422: "invalid request (the message says which field)",
        500: "internal error (quote the request id)", 503: "queue full or model not ready (see Retry-After)",
        504: "timeout expired before compute"}.items()
}

log = logging.getLogger("seqserve.inference")
router = APIRouter(prefix="/v1", dependencies=[Depends(require_inference_key)], responses=ERRORS)


@router.post("/classify", response_model=ClassifyResponse, summary="Classify texts")
async def classify(body: ClassifyRequest, request: Request) -> JSONResponse:
    """Each result has the label, its probability and every class probability."""
    return JSONResponse(await classify_body(body, request))  # served by service.hotpath; declared for /docs


async def classify_body(body: ClassifyRequest, request: Request) -> dict[str, Any]:
    state = request.app.state
    settings: Settings = state.settings
    model = state.manager.get(body.model, kind="classifier")
    request.state.model = model.name
    texts = check_texts(body.texts, settings)
    results = await run_texts(request, model, texts, state.metrics, deadline_from(request, settings),
                              log_texts=settings.log_texts)
    # Built here, not re-validated against the response model: this is the hot path.
    return {"model": model.name, "version": model.version, "results": results}


def decode_options(body: TranslateRequest | TranslateStreamRequest, settings: Settings) -> DecodeOptions:
    beam = body.beam_size if body.beam_size is not None else settings.default_beam_size
    if beam > settings.max_beam_size:
        raise InvalidInput(f"beam_size {beam} exceeds max_beam_size={settings.max_beam_size}")
    max_tokens = body.max_length if body.max_length is not None else settings.max_output_tokens
    if max_tokens > settings.max_output_tokens:
        raise InvalidInput(f"max_length {max_tokens} exceeds max_output_tokens={settings.max_output_tokens}")
    options = DecodeOptions(beam_size=beam, max_tokens=max_tokens)
    if body.length_penalty is not None:
        options = DecodeOptions(beam, body.length_penalty, options.max_len_a, options.max_len_b, max_tokens)
    return options


def translation_result(t: Translation, with_attention: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"translation": t.text, "score": t.score}
    if with_attention:
        result.update(source_tokens=t.source_tokens, target_tokens=t.target_tokens,
                      attention=[] if t.attention is None else t.attention.round(5).tolist())
    return result


@router.post("/translate", response_model=TranslateResponse, response_model_exclude_none=True,
             summary="Translate texts")
async def translate(body: TranslateRequest, request: Request, manager: ManagerDep, settings: SettingsDep,
                    metrics: MetricsDep) -> dict[str, Any]:
    """Beam search (or greedy with beam_size 1); attention weights on request."""
    model = manager.get(body.model, kind="translator")
    request.state.model = model.name
    texts = check_texts(body.texts, settings)
    options = decode_options(body, settings)
    results = await run_texts(request, model, texts, metrics, deadline_from(request, settings),
                              payload=lambda ids: TranslateItem(ids, options), log_texts=settings.log_texts)
    metrics.tokens.labels(model.name, "output").inc(sum(len(t.target_ids) for t in results))
    return {"model": model.name, "version": model.version,
            "results": [translation_result(t, body.return_attention) for t in results]}


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


@router.post("/translate/stream", summary="Translate one text, streaming tokens as Server-Sent Events",
             response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {"example": (
                 'event: token\ndata: {"index": 0, "token_id": 412, "text": "Zwei"}\n\n'
                 'event: done\ndata: {"translation": "Zwei Hunde spielen im Schnee.", "score": -0.4}\n\n')}}}})
async def translate_stream(body: TranslateStreamRequest, request: Request, manager: ManagerDep,
                           settings: SettingsDep, metrics: MetricsDep) -> StreamingResponse:
    """`token` events carry certain tokens as decoded (greedy: each step; beam: once every candidate agrees);
    a final `done` event carries the full result, or an `error` event says what failed."""
    model = manager.get(body.model, kind="translator")
    request.state.model = model.name
    text = check_texts([body.text], settings)[0]
    options = decode_options(body, settings)
    refuse_if_full(model, 1, metrics)
    if settings.log_texts:
        log.info("stream text for %s: %r", model.name, text)
    items, lengths = model.prepare([text], lambda ids: TranslateItem(ids, options))
    updates: asyncio.Queue[list[int]] = asyncio.Queue()
    deadline = deadline_from(request, settings)
    queue = model.queue
    if isinstance(queue, ContinuousScheduler):
        (future,) = queue.submit(items, lengths, deadline, on_tokens=updates.put_nowait)
    else:  # static batching or none: the tokens arrive together at the end
        (future,) = queue.submit(items, lengths, deadline)
    return StreamingResponse(_events(model, future, updates, metrics), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class TokenStream:
    """Turns growing lists of certain target ids into one `token` event per new token."""

    def __init__(self, target: Any) -> None:
        self.target, self.sent, self.shown = target, 0, ""

    def events(self, tokens: list[int]) -> list[bytes]:
        out = []
        for index in range(self.sent, len(tokens)):
            text = self.target.decode(tokens[: index + 1])
            complete = text.startswith(self.shown) and not text.endswith("\ufffd")  # hold back split UTF-8
            delta = text[len(self.shown):] if complete else ""
            self.shown += delta
            out.append(sse("token", {"index": index, "token_id": tokens[index], "text": delta}))
        self.sent = max(self.sent, len(tokens))
        return out


async def _events(model: Any, future: asyncio.Future[Translation], updates: asyncio.Queue[list[int]],
                  metrics: Metrics) -> AsyncIterator[bytes]:
    stream = TokenStream(model.runtime.target)
    try:
        while not future.done() or not updates.empty():
            getter: asyncio.Future[list[int]] = asyncio.ensure_future(updates.get())
            waiting: list[asyncio.Future[Any]] = [getter, future]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                continue
            for event in stream.events(getter.result()):
                yield event
        try:
            result = future.result()
        except Exception as exc:  # deadline, shutdown or a failed step: say so in the stream
            yield sse("error", {"error": str(exc) or type(exc).__name__})
            return
        for event in stream.events(result.target_ids):
            yield event
        metrics.tokens.labels(model.name, "output").inc(len(result.target_ids))
        yield sse("done", {"model": model.name, "version": model.version, "translation": result.text,
                           "score": result.score, "target_tokens": result.target_tokens})
    finally:
        if not future.done():
            future.cancel()  # the client left: the scheduler frees its rows at the next iteration
