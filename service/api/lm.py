"""A language model's API: POST /v1/complete (next words), /v1/generate and /v1/generate/stream (Server-Sent Events),
/v1/score, their bodies, and the v2 `parameters` (task = score or complete, k)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.body import body_doc, deadline_from, json_response, parameters, read_json
from service.api.deps import reach, require_inference_key
from service.api.errors import RESPONSES
from service.api.kind import ApiKind, FastRoute
from service.api.stream import TokenStream, open_stream, sse, stream_events
from service.engine.lm import Completion, Generation, SampleOptions, Scored
from service.metrics import Metrics
from service.serving.inference import InvalidInput, check_texts, run_texts
from service.serving.lm import LMOptions
from service.settings import Settings

log = logging.getLogger("seqserve.inference")
KIND_NAME = "lm"
MAX_WORDS = 50  # suggestions per text
MAX_STOPS, MAX_STOP_CHARS = 8, 64
MODEL_FIELD = Field(None, description="model name; optional when one language model is loaded")


class CompleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"model": "captions-lm", "texts": ["A man is riding a ", "Two dogs pl"], "k": 5}]})

    model: str | None = MODEL_FIELD
    texts: list[str] = Field(..., min_length=1, description="prefixes; one ending inside a word has that word "
                             "completed, one ending with a space or punctuation gets the next word")
    k: int = Field(5, ge=1, le=MAX_WORDS, description="words per text")


class Suggestion(BaseModel):
    word: str
    probability: float = Field(..., description="P(the next word is exactly this word | the prefix)")


class CompleteResult(BaseModel):
    partial: str = Field(..., description="the part of a word the prefix ends with (\"\" at a word boundary)")
    suggestions: list[Suggestion]


class CompleteResponse(BaseModel):
    model: str
    version: int
    results: list[CompleteResult]


class GenerateOptions(BaseModel):
    max_tokens: int = Field(32, ge=1, description="most tokens to generate; at most max_output_tokens")
    temperature: float = Field(1.0, ge=0.0, le=5.0, description="0 = greedy")
    top_k: int = Field(0, ge=0, description="sample from the k most likely tokens (0: all)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling: the fewest tokens holding this mass")
    seed: int | None = Field(None, ge=0, lt=2**63, description="the same seed gives the same sample, whatever else "
                             "is batched with it; without one a fresh seed is drawn and returned")
    stop: list[str] | str | None = Field(None, description="strings that end the text (not included in it)")
    ignore_eos: bool = Field(False, description="keep going past the end of text: exactly max_tokens (benchmarks)")

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: list[str] | str | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"at most {MAX_STOPS} stop strings, each 1 to {MAX_STOP_CHARS} characters")
        return stops


class GenerateRequest(GenerateOptions):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"model": "captions-lm", "texts": ["A little girl"], "max_tokens": 20, "temperature": 0.8,
                      "top_p": 0.95, "seed": 7, "stop": ["."]}]})

    model: str | None = MODEL_FIELD
    texts: list[str] = Field(..., min_length=1, description="prompts to continue")


class GenerateStreamRequest(GenerateOptions):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"model": "captions-lm", "text": "Two dogs", "max_tokens": 16, "seed": 1}]})

    model: str | None = MODEL_FIELD
    text: str = Field(..., description="one prompt; its tokens arrive as Server-Sent Events")


class GenerateResult(BaseModel):
    text: str = Field(..., description="the continuation, as it follows the prompt (with its leading space)")
    tokens: list[str]
    token_ids: list[int]
    log_probs: list[float] = Field(..., description="the model's log-probability of each token (natural log)")
    finish_reason: str = Field(..., description="length, stop or eos")
    seed: int
    prompt_tokens: int


class GenerateResponse(BaseModel):
    model: str
    version: int
    results: list[GenerateResult]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"model": "captions-lm", "texts": ["A man is riding a bike.", "bike a riding is man A."]}]})

    model: str | None = MODEL_FIELD
    texts: list[str] = Field(..., min_length=1)


class ScoreResult(BaseModel):
    log_prob: float = Field(..., description="total natural-log probability of the text and its end")
    perplexity: float = Field(..., description="exp(-log_prob / tokens)")
    tokens: list[str] = Field(..., description="the pieces, and </s> for the end of the text")
    log_probs: list[float]
    truncated: bool = Field(..., description="the text was longer than the model's max length: its start is scored")


class ScoreResponse(BaseModel):
    model: str
    version: int
    results: list[ScoreResult]


def sample_options(body: GenerateOptions, settings: Settings) -> SampleOptions:
    if body.max_tokens > settings.max_output_tokens:
        raise InvalidInput(f"max_tokens {body.max_tokens} exceeds max_output_tokens={settings.max_output_tokens}")
    return SampleOptions(body.max_tokens, body.temperature, body.top_k, body.top_p, body.seed,
                         tuple(body.stop or ()), body.ignore_eos)


def generation(g: Generation) -> dict[str, Any]:
    return {"text": g.text, "tokens": g.tokens, "token_ids": g.token_ids, "log_probs": g.log_probs,
            "finish_reason": g.finish_reason, "seed": g.seed, "prompt_tokens": g.prompt_tokens}


def completion(c: Completion) -> dict[str, Any]:
    return {"partial": c.partial, "suggestions": [{"word": w, "probability": p} for w, p in c.words]}


def scored(s: Scored) -> dict[str, Any]:
    return {"log_prob": s.log_prob, "perplexity": s.perplexity, "tokens": s.tokens, "log_probs": s.log_probs,
            "truncated": s.truncated}


async def _answer(request: Request, body: Any, options: LMOptions, shape: Any) -> Any:
    settings: Settings = request.app.state.settings
    model = reach(request, body.model, kind=KIND_NAME)
    texts = check_texts(body.texts, settings)
    results = await run_texts(model, texts, options, deadline_from(request, settings), request.receive,
                              log_texts=settings.log_texts)
    return model, {"model": model.name, "version": model.version, "results": [shape(r) for r in results]}


async def complete(request: Request) -> Any:
    """The k most likely next words of each prefix, with their probabilities; a prefix that ends inside a word has
    that word completed (a keyboard's suggestions)."""
    await require_inference_key(request)
    body = await read_json(request, CompleteRequest)
    _, answer = await _answer(request, body, LMOptions("complete", k=body.k), completion)
    return json_response(answer)


async def score(request: Request) -> Any:
    """Each text's log-probability, per token and in all, and its perplexity."""
    await require_inference_key(request)
    body = await read_json(request, ScoreRequest)
    _, answer = await _answer(request, body, LMOptions("score"), scored)
    return json_response(answer)


router = APIRouter(prefix="/v1", responses=RESPONSES)
router.add_api_route("/complete", complete, methods=["POST"], response_model=CompleteResponse,
                     summary="Suggest the next words", openapi_extra=body_doc(CompleteRequest))
router.add_api_route("/score", score, methods=["POST"], response_model=ScoreResponse,
                     summary="Score texts: log-probabilities and perplexity", openapi_extra=body_doc(ScoreRequest))


async def generate(request: Request) -> Any:
    """Sampled (or, at temperature 0, greedy) continuations with their tokens and log-probabilities."""
    await require_inference_key(request)
    body = await read_json(request, GenerateRequest)
    settings: Settings = request.app.state.settings
    options = LMOptions("generate", sample=sample_options(body, settings))
    model, answer = await _answer(request, body, options, generation)
    request.app.state.metrics.tokens.labels(model.name, "output").inc(
        sum(len(r["token_ids"]) for r in answer["results"]))
    return json_response(answer)


router.add_api_route("/generate", generate, methods=["POST"], response_model=GenerateResponse,
                     summary="Continue texts", openapi_extra=body_doc(GenerateRequest))


@router.post("/generate/stream", summary="Continue one text, streaming tokens as Server-Sent Events",
             response_class=StreamingResponse, openapi_extra=body_doc(GenerateStreamRequest),
             responses={200: {"content": {"text/event-stream": {"example": (
                 'event: token\ndata: {"index": 0, "token_id": 412, "text": " are"}\n\n'
                 'event: done\ndata: {"text": " are playing in the snow.", "log_probs": [-1.2, -0.8, -0.1, -0.9, '
                 '-0.3, -0.2], "finish_reason": "eos"}\n\n')}}}})
async def generate_stream(request: Request) -> StreamingResponse:
    """`token` events as each token is sampled (held back while it may begin a stop string); a final `done` event
    carries the whole result with every token's log-probability, or an `error` event says what failed. Leaving
    frees the request's row at the next iteration."""
    await require_inference_key(request)
    body = await read_json(request, GenerateStreamRequest)
    settings: Settings = request.app.state.settings
    model = reach(request, body.model, kind=KIND_NAME)
    text = check_texts([body.text], settings)[0]
    metrics = request.app.state.metrics
    return open_stream(request, model, text, LMOptions("generate", sample=sample_options(body, settings)),
                       lambda future, updates: _events(model, future, updates, metrics))


def _events(model: Any, future: asyncio.Future[Generation], updates: asyncio.Queue[list[int]],
            metrics: Metrics) -> AsyncIterator[bytes]:
    tokenizer = model.runtime.encoder.tokenizer
    stream = TokenStream(lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True)))

    def done(result: Generation) -> list[bytes]:
        metrics.tokens.labels(model.name, "output").inc(len(result.token_ids))
        return [*stream.events(result.token_ids, final_text=result.text),
                sse("done", {"model": model.name, "version": model.version, **generation(result)})]

    return stream_events(future, updates, stream.events, done)


def v2_options(params: dict[str, Any], settings: Settings) -> LMOptions:
    """v2 `parameters`: task = score (default) or complete, and k (words per text) for complete."""
    task = params.get("task", "score")
    if task not in ("score", "complete"):
        raise InvalidInput(f"parameters.task must be score or complete, got {task!r}")
    if task == "score":
        return LMOptions("score")
    return LMOptions("complete", k=parameters(CompleteRequest, params, ("k",), texts=["-"]).k)


KIND = ApiKind(KIND_NAME, router, v1_paths=("/v1/complete", "/v1/generate", "/v1/generate/stream", "/v1/score"),
               v2_options=v2_options, fast=(FastRoute("/v1/complete", complete), FastRoute("/v1/generate", generate)),
               bodies=(CompleteRequest, GenerateRequest, GenerateStreamRequest, ScoreRequest))
