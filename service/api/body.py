"""Request bodies and headers into our types, for the fast routes and the framework routes alike."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ValidationError

from service import tracing
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
    """UTF-8 JSON (RFC 8259: no other encoding, no NaN or Infinity) validated by `model`; anything else is the
    client's mistake: 400 when it does not parse, 422 when it does not validate."""
    if not raw.strip():
        raise InvalidInput("body: a JSON object is required")
    if tracing.enabled():
        with tracing.span("parse"):
            return _parse_json(raw, model)
    return _parse_json(raw, model)


def _parse_json(raw: bytes, model: type[Body]) -> Body:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBody("malformed body: not valid UTF-8 JSON") from None
    if "\x00" in text:  # never in JSON text; UTF-16 or UTF-32 without a byte-order mark
        raise MalformedBody("malformed body: not valid UTF-8 JSON (it holds NUL bytes: UTF-16 or UTF-32?)")
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise MalformedBody(f"malformed JSON: {exc.msg} (at character {exc.pos})") from None
    except RecursionError:
        raise MalformedBody("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # an integer past Python's digit limit, or NaN/Infinity
        raise MalformedBody(f"malformed JSON: {str(exc).splitlines()[0]}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(describe(exc.errors())) from None
    except RecursionError:
        raise InvalidInput("body: nested too deeply") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def json_response(content: Any) -> Response:
    """A 200 with compact UTF-8 JSON."""
    with tracing.span("response") if tracing.enabled() else nullcontext():
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
    if not 0 < timeout_s < math.inf:  # NaN fails too
        raise InvalidInput("the timeout must be a positive, finite number")
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


def parameters(model: type[Body], params: dict[str, Any], names: Sequence[str], **fixed: Any) -> Body:
    """v2 `parameters` validated (strictly: no string for a number) by a v1 request body, the `names` taken from
    them beside the `fixed` fields; a mistake names the parameter."""
    given = {k: params[k] for k in names if k in params}
    try:
        return model.model_validate({**fixed, **given}, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"parameters.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
