"""Request and response bodies (OpenAPI at /docs shows them with examples)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

STRICT = ConfigDict(extra="forbid")


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


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"model": "en-de", "texts": ["A man is riding a bike."], "beam_size": 4,
                      "return_attention": False}]})

    model: str | None = Field(None, description="model name; optional when one translator is loaded")
    texts: list[str] = Field(..., min_length=1)
    beam_size: int | None = Field(None, ge=1, description="1 = greedy; at most the server's max_beam_size")
    max_length: int | None = Field(None, ge=1, description="most target tokens; at most max_output_tokens")
    length_penalty: float | None = Field(None, ge=0.0, le=5.0)
    return_attention: bool = False


class TranslateStreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"model": "en-de", "text": "Two dogs play in the snow.", "beam_size": 1}]})

    model: str | None = Field(None, description="model name; optional when one translator is loaded")
    text: str = Field(..., description="one text; tokens arrive as Server-Sent Events")
    beam_size: int | None = Field(None, ge=1, description="1 streams token by token; a beam streams once certain")
    max_length: int | None = Field(None, ge=1)
    length_penalty: float | None = Field(None, ge=0.0, le=5.0)


class TranslateResult(BaseModel):
    translation: str
    score: float
    source_tokens: list[str] | None = None
    target_tokens: list[str] | None = None
    attention: list[list[float]] | None = Field(None, description="rows: target tokens, columns: source tokens")


class TranslateResponse(BaseModel):
    model: str
    version: int
    results: list[TranslateResult]


class ErrorBody(BaseModel):
    error: str
    request_id: str | None = None


class V2Tensor(BaseModel):
    model_config = STRICT

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2RequestedOutput(BaseModel):
    model_config = STRICT

    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "id": "1", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["What a film!"]}]}]})

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor] = Field(..., min_length=1)
    outputs: list[V2RequestedOutput] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2Tensor]
