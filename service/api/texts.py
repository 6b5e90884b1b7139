"""The request path of the one-shot text routes (/v1/classify, /v1/tag): a body with `model` and `texts`, one
result per text, answered without re-validating against the response model (this is the hot path)."""

from __future__ import annotations

from typing import Protocol

from fastapi import Request, Response
from pydantic import BaseModel

from service.api.body import deadline_from, json_response, read_json
from service.api.deps import reach, require_inference_key
from service.serving.inference import check_texts, run_texts
from service.settings import Settings


class TextsBody(Protocol):
    model: str | None
    texts: list[str]


async def answer_texts(request: Request, body_type: type[BaseModel], kind: str) -> Response:
    await require_inference_key(request)
    body: TextsBody = await read_json(request, body_type)  # type: ignore[assignment]
    settings: Settings = request.app.state.settings
    model = reach(request, body.model, kind=kind)
    texts = check_texts(body.texts, settings)
    results = await run_texts(model, texts, None, deadline_from(request, settings), request.receive,
                              log_texts=settings.log_texts)
    return json_response({"model": model.name, "version": model.version, "results": results})
