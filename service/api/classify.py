"""The classifier's API: POST /v1/classify (a fast route), its bodies, and its v2 options (none)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.body import body_doc
from service.api.errors import RESPONSES
from service.api.kind import ApiKind, FastRoute
from service.api.texts import answer_texts
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
    return await answer_texts(request, ClassifyRequest, KIND_NAME)


def v2_options(params: dict[str, Any], settings: Settings) -> None:
    return None  # a classifier takes no per-request options


router = APIRouter(prefix="/v1", responses=RESPONSES)
router.add_api_route("/classify", classify, methods=["POST"], response_model=ClassifyResponse,
                     summary="Classify texts", openapi_extra=body_doc(ClassifyRequest))

KIND = ApiKind(KIND_NAME, router, v1_paths=(PATH,), v2_options=v2_options, fast=(FastRoute(PATH, classify),),
               bodies=(ClassifyRequest,))
