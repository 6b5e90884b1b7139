"""POST /v1/classify without the framework's per-request layers.

A classifier request carries a sentence or two, so its compute is a fraction of a millisecond in a batch,
and the event loop's share of each request decides throughput. Profiled at concurrency 32 (py-spy,
GIL samples), FastAPI's own layers took over half of the loop's time: four middlewares, route matching,
dependency resolution and its body machinery.

`ServiceApp` sends this one route to `HotPath`: the app's own user middleware (`ServiceMiddleware`: request
id, limits, metrics, edge shedding; CORS when on) around a handler that reads the body as the framework does,
validates it with the route's pydantic model and runs the route's own function (`routes_v1.classify_body`).
Errors go to the app's exception handlers, so the answers are the framework route's. That route stays
declared for OpenAPI (/docs); every other path takes the normal stack.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from service import routes_v1
from service.deps import require_inference_key
from service.schemas import ClassifyRequest

PATH = "/v1/classify"


class _Route:
    """Stands in for the matched route in `scope["route"]`, which the metrics label their endpoint by."""

    path = PATH


def _media_type(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key == b"content-type":
            media: str = value.decode("latin-1").split(";")[0].strip().lower()
            return media
    return ""


def _invalid(kind: str, message: str, given: Any, *where: Any, **extra: Any) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body", *where), "msg": message, "input": given, **extra}])


class ServiceApp(FastAPI):
    """The FastAPI app, except that POST /v1/classify goes straight to `HotPath` (its own middleware chain)."""

    hot_path: HotPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.hot_path is not None and scope["type"] == "http" and scope["path"] == PATH
                and scope["method"] == "POST"):
            scope["app"] = self
            await self.hot_path.chain(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    def enable_hot_path(self) -> None:
        """Call once every user middleware is added: the hot path runs the same ones, in the same order."""
        self.hot_path = HotPath(self)


class HotPath:
    def __init__(self, app: FastAPI) -> None:
        self.app, self.route = app, _Route()
        chain: ASGIApp = self._classify
        for middleware in reversed(app.user_middleware):
            chain = middleware.cls(chain, *middleware.args, **middleware.kwargs)
        self.chain = chain

    async def _classify(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route
        request = Request(scope, receive)
        try:
            answer = await routes_v1.classify_body(await self._body(request), request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise  # ServiceMiddleware logs it and answers 500 with the request id
            response = await handler(request, exc)
            await response(scope, receive, send)
            return
        # the bytes JSONResponse would render
        body = json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

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
