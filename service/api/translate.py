"""The translator's API: POST /v1/translate and /v1/translate/stream (Server-Sent Events), their bodies, and
the decoding options of v2 `parameters`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from service.api.body import body_doc, deadline_from, parameters, read_json
from service.api.deps import reach, require_inference_key
from service.api.errors import RESPONSES
from service.api.kind import ApiKind
from service.api.stream import TokenStream, open_stream, sse, stream_events
from service.engine.translator import DecodeOptions, Translation
from service.metrics import Metrics
from service.serving.inference import InvalidInput, check_texts, run_texts
from service.settings import Settings

log = logging.getLogger("seqserve.inference")
KIND_NAME = "translator"


class SearchOptions(BaseModel):
    """Decoding options of /v1/translate and its stream (and v2 parameters) that choose how a search runs."""

    shortlist: bool = Field(True, description="decode over the sentence's lexical shortlist when the model has one "
                            "(faster on CPU; false: over the whole vocabulary)")
    early_stopping: Literal["bound", "length", "beam"] = Field(
        "bound", description="when a beam search stops: bound (as soon as no live hypothesis can beat the best "
        "finished one; the answer of searching to the length limit), length (the best live one scored at its current "
        "length), beam (once beam_size hypotheses have finished: fewest steps, may change answers)")


class TranslateRequest(SearchOptions):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"model": "en-de", "texts": ["A man is riding a bike."], "beam_size": 4,
                      "return_attention": False}]})

    model: str | None = Field(None, description="model name; optional when one translator is loaded")
    texts: list[str] = Field(..., min_length=1)
    beam_size: int | None = Field(None, ge=1, description="1 = greedy; at most the server's max_beam_size")
    max_length: int | None = Field(None, ge=1, description="most target tokens; at most max_output_tokens")
    length_penalty: float | None = Field(None, ge=0.0, le=5.0)
    num_hypotheses: int | None = Field(None, ge=1, description="return the n best translations with their scores "
                                       "(n at most beam_size)")
    split_sentences: bool = Field(True, description="translate a text of several sentences sentence by sentence, "
                                  "joined back with the text's own whitespace (false: as one sequence)")
    return_attention: bool = False


class TranslateStreamRequest(SearchOptions):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"model": "en-de", "text": "Two dogs play in the snow.", "beam_size": 1}]})

    model: str | None = Field(None, description="model name; optional when one translator is loaded")
    text: str = Field(..., description="one text; tokens arrive as Server-Sent Events")
    beam_size: int | None = Field(None, ge=1, description="1 streams token by token; a beam streams once certain")
    max_length: int | None = Field(None, ge=1)
    length_penalty: float | None = Field(None, ge=0.0, le=5.0)
    num_hypotheses: int | None = Field(None, ge=1, description="the n best, in the final event")


class Hypothesis(BaseModel):
    translation: str
    score: float


class TranslateSentence(BaseModel):
    start: int = Field(..., description="the sentence is the text's characters start to end (end excluded)")
    end: int
    source: str
    translation: str
    score: float
    hypotheses: list[Hypothesis] | None = None
    source_tokens: list[str] | None = None
    target_tokens: list[str] | None = None
    attention: list[list[float]] | None = None


class TranslateResult(BaseModel):
    translation: str
    score: float = Field(..., description="log-probability over the length penalty; for several sentences their "
                         "mean")
    hypotheses: list[Hypothesis] | None = Field(None, description="the n best, best first (num_hypotheses); for "
                                                "several sentences the i-th joins each sentence's i-th")
    sentences: list[TranslateSentence] | None = Field(None, description="how a text of several sentences was "
                                                      "split, each sentence with its own translation")
    source_tokens: list[str] | None = None
    target_tokens: list[str] | None = None
    attention: list[list[float]] | None = Field(None, description="rows: target tokens, columns: source tokens")


class TranslateResponse(BaseModel):
    model: str
    version: int
    results: list[TranslateResult]


def decode_options(body: TranslateRequest | TranslateStreamRequest, settings: Settings) -> DecodeOptions:
    beam = body.beam_size if body.beam_size is not None else settings.default_beam_size
    if beam > settings.max_beam_size:
        raise InvalidInput(f"beam_size {beam} exceeds max_beam_size={settings.max_beam_size}")
    max_tokens = body.max_length if body.max_length is not None else settings.max_output_tokens
    if max_tokens > settings.max_output_tokens:
        raise InvalidInput(f"max_length {max_tokens} exceeds max_output_tokens={settings.max_output_tokens}")
    n = body.num_hypotheses if body.num_hypotheses is not None else 1
    if n > beam:
        raise InvalidInput(f"num_hypotheses {n} exceeds beam_size={beam}: a beam of {beam} finds at most {beam} "
                           "translations")
    options = DecodeOptions(beam_size=beam, max_tokens=max_tokens, num_hypotheses=n,
                            split_sentences=getattr(body, "split_sentences", False), shortlist=body.shortlist,
                            early_stopping=body.early_stopping)
    if body.length_penalty is not None:
        options = replace(options, length_penalty=body.length_penalty)
    return options


def hypotheses(t: Translation) -> list[dict[str, Any]]:
    """The n best; one (the translation itself) when a single one was asked for."""
    return [{"translation": a.text, "score": a.score} for a in t.alternatives] or [
        {"translation": t.text, "score": t.score}]


def translation_result(t: Translation, with_attention: bool, with_hypotheses: bool = False,
                       text: str = "") -> dict[str, Any]:
    """A result as /v1/translate answers it; `text` is the source (for a split text's sentences)."""
    result: dict[str, Any] = {"translation": t.text, "score": t.score}
    if with_hypotheses:
        result["hypotheses"] = hypotheses(t)
    if t.sentences is not None:  # tokens and attention stay per sentence
        result["sentences"] = [{"start": s.start, "end": s.end, "source": text[s.start: s.end], **translation_result(
            s.translation, with_attention, with_hypotheses)} for s in t.sentences]
    elif with_attention:
        result.update(source_tokens=t.source_tokens, target_tokens=t.target_tokens,
                      attention=[] if t.attention is None else t.attention.round(5).tolist())
    return result


router = APIRouter(prefix="/v1", dependencies=[Depends(require_inference_key)], responses=RESPONSES)


@router.post("/translate", response_model=TranslateResponse, response_model_exclude_none=True,
             summary="Translate texts", openapi_extra=body_doc(TranslateRequest))
async def translate(request: Request) -> dict[str, Any]:
    """Beam search (or greedy with beam_size 1); attention weights on request."""
    body = await read_json(request, TranslateRequest)
    settings: Settings = request.app.state.settings
    model = reach(request, body.model, kind=KIND_NAME)
    texts = check_texts(body.texts, settings)
    options = decode_options(body, settings)
    results = await run_texts(model, texts, options, deadline_from(request, settings), request.receive,
                              log_texts=settings.log_texts)
    request.app.state.metrics.tokens.labels(model.name, "output").inc(sum(len(t.target_ids) for t in results))
    return {"model": model.name, "version": model.version,
            "results": [translation_result(t, body.return_attention, body.num_hypotheses is not None, text)
                        for t, text in zip(results, texts, strict=True)]}


@router.post("/translate/stream", summary="Translate one text, streaming tokens as Server-Sent Events",
             response_class=StreamingResponse,
             openapi_extra=body_doc(TranslateStreamRequest),
             responses={200: {"content": {"text/event-stream": {"example": (
                 'event: token\ndata: {"index": 0, "token_id": 412, "text": "Zwei"}\n\n'
                 'event: done\ndata: {"translation": "Zwei Hunde spielen im Schnee.", "score": -0.4}\n\n')}}}})
async def translate_stream(request: Request) -> StreamingResponse:
    """`token` events carry certain tokens as decoded (greedy: each step; beam: once every candidate agrees);
    a final `done` event carries the full result, or an `error` event says what failed."""
    body = await read_json(request, TranslateStreamRequest)
    settings: Settings = request.app.state.settings
    model = reach(request, body.model, kind=KIND_NAME)
    text = check_texts([body.text], settings)[0]
    metrics = request.app.state.metrics
    with_hypotheses = body.num_hypotheses is not None
    return open_stream(request, model, text, decode_options(body, settings),
                       lambda future, updates: _events(model, future, updates, metrics, with_hypotheses))


def _events(model: Any, future: asyncio.Future[Translation], updates: asyncio.Queue[list[int]],
            metrics: Metrics, with_hypotheses: bool) -> AsyncIterator[bytes]:
    stream = TokenStream(model.runtime.target.decode)

    def done(result: Translation) -> list[bytes]:
        metrics.tokens.labels(model.name, "output").inc(len(result.target_ids))
        return [*stream.events(result.target_ids),
                sse("done", {"model": model.name, "version": model.version, "translation": result.text,
                             "score": result.score, "target_tokens": result.target_tokens,
                             **({"hypotheses": hypotheses(result)} if with_hypotheses else {})})]

    return stream_events(future, updates, stream.events, done)


def v2_options(params: dict[str, Any], settings: Settings) -> DecodeOptions:
    """Decoding options from the v2 parameters beam_size, max_length, length_penalty, num_hypotheses,
    split_sentences, shortlist and early_stopping (as in /v1/translate)."""
    request = parameters(TranslateRequest, params, ("beam_size", "max_length", "length_penalty", "num_hypotheses",
                                                    "split_sentences", "shortlist", "early_stopping"), texts=["-"])
    return decode_options(request, settings)


KIND = ApiKind(KIND_NAME, router, v1_paths=("/v1/translate", "/v1/translate/stream"), v2_options=v2_options,
               bodies=(TranslateRequest, TranslateStreamRequest))
