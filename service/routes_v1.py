"""REST endpoints: POST /v1/classify and POST /v1/translate."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from service.deps import ManagerDep, MetricsDep, SettingsDep, require_inference_key
from service.inference import InvalidInput, check_texts, deadline_from, run_texts
from service.schemas import ClassifyRequest, ClassifyResponse, ErrorBody, TranslateRequest, TranslateResponse
from service.served import TranslateItem
from service.settings import Settings
from service.translator import DecodeOptions, Translation

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in {
        401: "missing or wrong API key", 404: "unknown model", 413: "a size limit was exceeded",
        415: "body is not JSON", 422: "invalid request (the message says which field)",
        503: "queue full or model not ready (see Retry-After)", 504: "timeout expired before compute"}.items()
}

router = APIRouter(prefix="/v1", dependencies=[Depends(require_inference_key)], responses=ERRORS)


@router.post("/classify", response_model=ClassifyResponse, summary="Classify texts")
async def classify(body: ClassifyRequest, request: Request, manager: ManagerDep, settings: SettingsDep,
                   metrics: MetricsDep) -> dict[str, Any]:
    """Each result has the label, its probability and every class probability."""
    model = manager.get(body.model, kind="classifier")
    request.state.model = model.name
    texts = check_texts(body.texts, settings)
    results = await run_texts(request, model, texts, metrics, deadline_from(request, settings))
    return {"model": model.name, "version": model.version, "results": results}


def decode_options(body: TranslateRequest, settings: Settings) -> DecodeOptions:
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
                              payload=lambda ids: TranslateItem(ids, options))
    metrics.tokens.labels(model.name, "output").inc(sum(len(t.target_ids) for t in results))
    return {"model": model.name, "version": model.version,
            "results": [translation_result(t, body.return_attention) for t in results]}
