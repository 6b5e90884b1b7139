"""POST /v1/classify and v2 `infer` without the framework's per-request layers.

A classifier request carries a sentence or two, so its compute is a fraction of a millisecond in a batch,
and the event loop's share of each request decides throughput. Profiled at concurrency 32 (py-spy,
GIL samples), FastAPI's own layers took over half of the loop's time: four middlewares, route matching,
dependency resolution and its body machinery.

`ServiceApp` sends these routes to `HotPath`: the app's own user middleware (`ServiceMiddleware`: request
id, limits, metrics, edge shedding; CORS when on) around a handler that reads the body as the framework does
and runs the route's own function (`routes_v1.classify_body`, `routes_v2.infer_body`); the response goes
through the route's response model as the framework would. Errors go to the app's exception handlers, so the
answers are the framework route's. Path parameters the framework would refuse (a model name over 64
characters, a version that is not a positive integer) take the framework route, as does every other path;
the routes stay declared for OpenAPI (/docs).
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from service import routes_v1, routes_v2
from service.deps import require_inference_key
from service.schemas import ClassifyRequest, V2InferResponse

CLASSIFY = "/v1/classify"
V2_INFER = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<number>[^/]+))?/infer")
V2_PREFIX = "/v2/models/"


class _Route:
    """Stands in for the matched route in `scope["route"]`, which the metrics label their endpoint by."""

    def __init__(self, path: str) -> None:
        self.path = path


def _plain(match: re.Match[str]) -> bool:
    """Path parameters the framework route accepts as they are (`routes_v2.ModelName`, `routes_v2.Version`)."""
    number = match["number"]
    return len(match["name"]) <= 64 and (number is None or (number.isascii() and number.isdigit()
                                                             and int(number) >= 1))


def _media_type(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key == b"content-type":
            media: str = value.decode("latin-1").split(";")[0].strip().lower()
            return media
    return ""


def _invalid(kind: str, message: str, given: Any, *where: Any, **extra: Any) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body", *where), "msg": message, "input": given, **extra}])


class ServiceApp(FastAPI):
    """The FastAPI app, except that the inference routes go straight to `HotPath` (its own middleware chain)."""

    hot_path: HotPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.hot_path.route(scope) if self.hot_path is not None else None
        if handler is not None:
            scope["app"] = self
            await handler(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    def enable_hot_path(self) -> None:
        """Call once every user middleware is added: the hot path runs the same ones, in the same order."""
        self.hot_path = HotPath(self)


class HotPath:
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.classify, self.infer = self._chain(self._classify), self._chain(self._infer)
        self.classify_route = _Route(CLASSIFY)
        self.infer_route = _Route(V2_PREFIX + "{name}/infer")
        self.infer_version_route = _Route(V2_PREFIX + "{name}/versions/{number}/infer")

    def _chain(self, handler: ASGIApp) -> ASGIApp:
        for middleware in reversed(self.app.user_middleware):
            handler = middleware.cls(handler, *middleware.args, **middleware.kwargs)
        return handler

    def route(self, scope: Scope) -> ASGIApp | None:
        """The hot handler for this request, or None for the framework's stack."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        if path == CLASSIFY:
            return self.classify
        if path.startswith(V2_PREFIX) and (match := V2_INFER.fullmatch(path)) and _plain(match):
            scope["path_params"] = match.groupdict()  # where the framework's router puts them
            return self.infer
        return None

    async def _classify(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.classify_route
        request = Request(scope, receive)
        try:
            answer = await routes_v1.classify_body(await self._body(request), request)
        except Exception as exc:
            await self._error(request, exc, send)
            return
        await _send_json(answer, send)

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        name, number = scope["path_params"]["name"], scope["path_params"]["number"]
        scope["route"] = self.infer_route if number is None else self.infer_version_route
        request = Request(scope, receive)
        try:
            await require_inference_key(request)
            model = self.app.state.manager.get(name, None if number is None else int(number))
            answer = await routes_v2.infer_body(request, model)
            # the route's response_model with response_model_exclude_none, as the framework applies them
            shaped = V2InferResponse.model_validate(answer).model_dump(mode="json", exclude_none=True)
        except Exception as exc:
            await self._error(request, exc, send)
            return
        await _send_json(shaped, send)

    async def _error(self, request: Request, exc: Exception, send: Send) -> None:
        handler = self._handler_for(exc)
        if handler is None:
            raise exc  # ServiceMiddleware logs it and answers 500 with the request id
        response = await handler(request, exc)
        await response(request.scope, request.receive, send)

    async def _body(self, request: Request) -> ClassifyRequest:
        """The framework's reading of a JSON body: only a JSON media type is parsed, with `json.loads`."""
        await require_inference_key(request)
        raw = await request.body()
        if not raw:
            raise _invalid("missing", "Field required", None)
        data: Any = raw  # a body that is not JSON by its media type is validated as bytes, and fails
        media = _media_type(request.scope)
        if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise _invalid("json_invalid", "JSON decode error", {}, exc.pos, ctx={"error": exc.msg}) from None
            except ValueError:  # not UTF-8
                raise HTTPException(400, "There was an error parsing the body") from None
        try:
            return ClassifyRequest.model_validate(data, from_attributes=True)
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None

    def _handler_for(self, exc: Exception) -> Any:
        handlers = self.app.exception_handlers
        return next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)


async def _send_json(content: Any, send: Send) -> None:
    """A 200 with the bytes JSONResponse would render."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
