"""The classifier's API: POST /v1/classify (a fast route), its bodies, and its v2 options (none)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.body import body_doc, deadline_from, json_response, read_json
from service.api.deps import reach, require_inference_key
from service.api.errors import RESPONSES
from service.api.kind import ApiKind, FastRoute
from service.serving.inference import check_texts, run_texts
from service.settings import Settings

PATH = "/v1/classify"
KIND_NAME = "classifier"


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"model": "sentiment", "texts": ["A gripping, beautifully acted film.", "Dull and overlong."]}]})

    model: str | None = Field(None, description="model name; optional when one classifier is loaded")
    texts: list[str] = Field(..., min_length=1, description="texts to classify (not empty or blank)")


class ClassifyResult(BaseModel):
    label: str
    score: float
    probabilities: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    version: int
    results: list[ClassifyResult]


async def classify(request: Request) -> Response:
    """Each result has the label, its probability and every class probability."""
    await require_inference_key(request)
    body = await read_json(request, ClassifyRequest)
    settings: Settings = request.app.state.settings
    model = reach(request, body.model, kind=KIND_NAME)
    texts = check_texts(body.texts, settings)
    results = await run_texts(model, texts, None, deadline_from(request, settings), request.receive,
                              log_texts=settings.log_texts)
    # Built here, not re-validated against the response model: this is the hot path.
    return json_response({"model": model.name, "version": model.version, "results": results})


def v2_options(params: dict[str, Any], settings: Settings) -> None:
    return None  # a classifier takes no per-request options


router = APIRouter(prefix="/v1", responses=RESPONSES)
router.add_api_route("/classify", classify, methods=["POST"], response_model=ClassifyResponse,
                     summary="Classify texts", openapi_extra=body_doc(ClassifyRequest))

KIND = ApiKind(KIND_NAME, router, v1_paths=(PATH,), v2_options=v2_options, fast=(FastRoute(PATH, classify),),
               bodies=(ClassifyRequest,))
