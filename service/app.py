"""Assembles the FastAPI app: settings, model manager, metrics, middleware, routes, error mapping."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from service import routes_demo, routes_v1, routes_v2
from service.batcher import DeadlineExceeded, QueueFull, ShuttingDown
from service.deps import Forbidden, Unauthorized, key_matches
from service.errors import UserError
from service.hotpath import V2_INFER, ServiceApp
from service.inference import ClientGone, InvalidInput, TooLarge
from service.manager import ModelManager, ModelNotFound, ModelNotReady, settle_heap
from service.metrics import Metrics
from service.middleware import BodyTooLarge, ServiceMiddleware, Shed
from service.repository import RepositoryError
from service.routes_v2 import MalformedBody, UnsupportedMedia
from service.settings import Settings

log = logging.getLogger("seqserve.app")

STATUS: list[tuple[type[Exception], int]] = [
    (MalformedBody, 400), (UnsupportedMedia, 415), (InvalidInput, 422), (TooLarge, 413), (BodyTooLarge, 413),
    (Unauthorized, 401), (Forbidden, 403), (ModelNotFound, 404), (ModelNotReady, 503), (QueueFull, 503),
    (ShuttingDown, 503), (DeadlineExceeded, 504), (RepositoryError, 404), (UserError, 400),
]


def error_response(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    return JSONResponse({"error": message, "request_id": request_id}, status_code=status, headers=headers)


async def handle_known(request: Request, exc: Exception) -> Response:
    status = next(code for cls, code in STATUS if isinstance(exc, cls))
    headers = {"Retry-After": str(request.app.state.settings.retry_after_s)} if status == 503 else None
    return error_response(request, status, str(exc), headers)


async def handle_validation(request: Request, exc: RequestValidationError) -> Response:
    first: dict[str, Any] = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    if first.get("type") == "json_invalid":
        return error_response(request, 400, f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}")
    if request.headers.get("content-type", "").split(";")[0].strip() not in ("application/json", ""):
        return error_response(request, 415, "send the body as Content-Type: application/json")
    return error_response(request, 422, f"{where}: {first['msg']}")


async def handle_http(request: Request, exc: StarletteHTTPException) -> Response:
    """Framework errors (unknown route, wrong method, unparsable body) in the same shape as ours."""
    message = {404: "no such endpoint", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    if exc.status_code == 400 and "parsing the body" in str(exc.detail):
        message = "malformed body: not valid UTF-8 JSON"
    return error_response(request, exc.status_code, message, getattr(exc, "headers", None))


async def handle_gone(request: Request, exc: ClientGone) -> Response:
    return error_response(request, 499, "client closed the request")


V1_KINDS = {"/v1/classify": "classifier", "/v1/translate": "translator", "/v1/translate/stream": "translator"}


def edge_shedding(settings: Settings, manager: ModelManager, metrics: Metrics) -> Shed:
    """Inference requests that can only get 503 (every model they could reach has a full queue), found from
    the path alone. Anything less certain, or unauthenticated when keys are on, takes the normal path."""

    def shed(scope: Scope, headers: dict[str, str]) -> tuple[str, str] | None:
        if scope["method"] != "POST" or (settings.api_key and not key_matches(headers, settings.api_key)):
            return None
        if settings.cors_origins and "origin" in headers:
            return None  # a browser needs the CORS headers the inner middleware adds to read the 503
        path: str = scope["path"]
        if path in V1_KINDS:
            kind, endpoint = V1_KINDS[path], path
            model = manager.all_full(kind=kind)
            count = sum(m.kind == kind for m in manager.models.values())
            message = (f"model {model.name!r} queue is full ({model.queue.max_queue} texts)" if count == 1 and model
                       else f"all {count} {kind} queues are full")
        elif match := V2_INFER.fullmatch(path):
            model = manager.all_full(name=match["name"])
            if model is not None and match["number"] is not None and match["number"] != str(model.version):
                return None  # a version that is not loaded: the normal path answers 404
            endpoint = "/v2/models/{name}" + ("/versions/{number}" if match["number"] else "") + "/infer"
            message = f"model {match['name']!r} queue is full ({model.queue.max_queue} texts)" if model else ""
        else:
            return None
        if model is None:
            return None
        metrics.rejections.labels(model.name, "queue_full").inc()
        scope["state"]["endpoint"] = endpoint
        return model.name, message

    return shed


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    manager = ModelManager(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.load_all()
        settle_heap()
        app.state.started = True
        log.info("ready: %s", ", ".join(f"{m.name} v{m.version}" for m in manager.models.values()) or "no models")
        yield
        app.state.started = False
        await manager.close()
        gc.unfreeze()

    app = ServiceApp(title="seqserve", version=routes_v2.SERVER_VERSION, lifespan=lifespan,
                  description="Recurrent NLP models (classification, translation) on ONNX Runtime. "
                              "REST under /v1, Open Inference Protocol v2 under /v2, metrics at /metrics.")
    app.state.settings, app.state.metrics, app.state.manager, app.state.started = settings, metrics, manager, False
    app.include_router(routes_v1.router)
    app.include_router(routes_v2.router)
    app.include_router(routes_demo.router)
    for cls, _ in STATUS:
        app.add_exception_handler(cls, handle_known)
    app.add_exception_handler(RequestValidationError, handle_validation)  # type: ignore[arg-type]
    app.add_exception_handler(ClientGone, handle_gone)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, handle_http)  # type: ignore[arg-type]

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    app.add_middleware(ServiceMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       shed=edge_shedding(settings, manager, metrics), retry_after_s=settings.retry_after_s)
    app.enable_hot_path()
    return app
