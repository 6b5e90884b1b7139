"""The tagger's API: POST /v1/tag (a fast route), its bodies, and its v2 options (none)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.body import body_doc
from service.api.errors import RESPONSES
from service.api.kind import ApiKind, FastRoute
from service.api.texts import answer_texts
from service.settings import Settings

PATH = "/v1/tag"
KIND_NAME = "tagger"


class TagRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"model": "atis", "texts": ["show me flights from boston to denver on monday morning",
                                                 "what is the cheapest fare from dallas to baltimore"]}]})

    model: str | None = Field(None, description="model name; optional when one tagger is loaded")
    texts: list[str] = Field(..., min_length=1, description="texts to tag (not empty or blank); any script")


class TaggedToken(BaseModel):
    text: str
    start: int = Field(..., description="character offset (Unicode code points) where the word starts")
    end: int = Field(..., description="character offset just past the word: text[start:end] is the word")
    tag: str
    score: float = Field(..., description="the tag's probability (a CRF's marginal)")


class Entity(BaseModel):
    label: str
    start: int
    end: int
    text: str = Field(..., description="the exact characters of the input: texts[i][start:end]")
    score: float = Field(..., description="the mean of its words' scores")


class Intent(BaseModel):
    label: str
    score: float
    probabilities: dict[str, float]


class TagResult(BaseModel):
    tokens: list[TaggedToken]
    entities: list[Entity]
    intent: Intent | None = Field(None, description="only from a model with an intent head")
    truncated_at: int | None = Field(None, description="the character offset where the model's max length cut the "
                                     "text: words from there on are not tagged; null when nothing was cut")


class TagResponse(BaseModel):
    model: str
    version: int
    results: list[TagResult]


async def tag(request: Request) -> Response:
    """Each result has the words with their character offsets, tags and scores, the entities (label, offsets, the
    exact text, score) and, from a joint model, the intent."""
    return await answer_texts(request, TagRequest, KIND_NAME)


def v2_options(params: dict[str, Any], settings: Settings) -> None:
    return None  # a tagger takes no per-request options


router = APIRouter(prefix="/v1", responses=RESPONSES)
router.add_api_route("/tag", tag, methods=["POST"], response_model=TagResponse, response_model_exclude_none=True,
                     summary="Tag texts: slots or named entities, and the intent", openapi_extra=body_doc(TagRequest))

KIND = ApiKind(KIND_NAME, router, v1_paths=(PATH,), v2_options=v2_options, fast=(FastRoute(PATH, tag),),
               bodies=(TagRequest,))
