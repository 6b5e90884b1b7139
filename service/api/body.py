"""Request bodies and headers into our types, for the fast routes and the framework routes alike."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ValidationError

from service.api.errors import MalformedBody, UnsupportedMedia, describe
from service.serving.inference import InvalidInput
from service.settings import Settings

Body = TypeVar("Body", bound=BaseModel)


def is_json(media_type: str) -> bool:
    return media_type in ("application/json", "") or (media_type.startswith("application/")
                                                      and media_type.endswith("+json"))


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, model: type[Body]) -> Body:
    """The body, which must be JSON (by its Content-Type, when it has one), validated by `model`."""
    if not is_json(media_type(request)):
        raise UnsupportedMedia("send the body as Content-Type: application/json")
    return parse_json(await request.body(), model)


def parse_json(raw: bytes, model: type[Body]) -> Body:
    if not raw.strip():
        raise InvalidInput("body: a JSON object is required")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MalformedBody(f"malformed JSON: {exc.msg} (at byte {exc.pos})") from None
    except (UnicodeDecodeError, RecursionError):
        raise MalformedBody("malformed body: not valid UTF-8 JSON, or nested too deeply") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(describe(exc.errors())) from None


def json_response(content: Any) -> Response:
    """A 200 with compact UTF-8 JSON."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return Response(body, media_type="application/json")


def deadline_from(request: Request, settings: Settings, timeout_s: float | None = None) -> float | None:
    """An absolute monotonic deadline from X-Timeout-Ms, a v2 `timeout` parameter or the default."""
    header = request.headers.get("x-timeout-ms")
    if header is not None:
        try:
            timeout_s = float(header) / 1000
        except ValueError:
            raise InvalidInput(f"X-Timeout-Ms must be a number of milliseconds, got {header!r}") from None
    if timeout_s is None and settings.default_timeout_s > 0:
        timeout_s = settings.default_timeout_s
    if timeout_s is None:
        return None
    if timeout_s <= 0:
        raise InvalidInput("the timeout must be positive")
    return time.monotonic() + timeout_s


def body_doc(model: type[BaseModel], **other_content: Any) -> dict[str, Any]:
    """OpenAPI for a route that reads its own body: `model` by reference (see `document_bodies`)."""
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}, **other_content}
    return {"requestBody": {"required": True, "content": content}}


def document_bodies(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Adds the bodies that routes read themselves to the app's OpenAPI components (FastAPI lists only the
    models its routes declare as parameters)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                own = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(own.pop("$defs", {}))
                components[model.__name__] = own
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
