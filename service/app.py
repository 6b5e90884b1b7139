"""Assembles the service, outermost first: the service middleware (and CORS when on), the fast-route
dispatcher, then the FastAPI app with every route; settings, model manager and metrics are made here once."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api import demo, errors, v2
from service.api.body import document_bodies
from service.api.fastpath import FastPath
from service.api.kinds import API_KINDS
from service.api.middleware import ServiceMiddleware
from service.api.schemas import V2InferRequest
from service.api.shedding import edge_shedding
from service.metrics import Metrics
from service.serving.manager import ModelManager, settle_heap
from service.settings import Settings

log = logging.getLogger("seqserve.app")


class ServiceApp:
    """The assembled ASGI app. `api` is the FastAPI app (its `state` holds settings, manager and metrics);
    `fast` is the dispatcher of the fast routes, or None when they are off."""

    def __init__(self, api: FastAPI, fast: FastPath | None, stack: ASGIApp) -> None:
        self.api, self.fast, self.state, self._stack = api, fast, api.state, stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._stack(scope, receive, send)


def create_api(settings: Settings, manager: ModelManager, metrics: Metrics) -> FastAPI:
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

    api = FastAPI(title="seqserve", version=v2.SERVER_VERSION, lifespan=lifespan,
                  description="Recurrent NLP models (classification, translation) on ONNX Runtime. "
                              "REST under /v1, Open Inference Protocol v2 under /v2, metrics at /metrics.")
    api.state.settings, api.state.metrics, api.state.manager, api.state.started = settings, metrics, manager, False
    for kind in API_KINDS.values():
        api.include_router(kind.router)
    api.include_router(v2.router)
    api.include_router(demo.router)
    errors.install(api)
    document_bodies(api, [body for kind in API_KINDS.values() for body in kind.bodies] + [V2InferRequest,
                                                                                          v2.LoadRequest])

    @api.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return api


def create_app(settings: Settings, fast_routes: bool = True) -> ServiceApp:
    """`fast_routes=False` leaves every request to the framework's routes (the fast routes' twins)."""
    metrics = Metrics()
    manager = ModelManager(settings, metrics)
    api = create_api(settings, manager, metrics)
    fast = FastPath(api, [r for kind in API_KINDS.values() for r in kind.fast] + list(v2.FAST)) if fast_routes \
        else None
    inner: ASGIApp = fast or api
    if settings.cors_origins:
        inner = CORSMiddleware(inner, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                               allow_headers=["*"])
    stack = ServiceMiddleware(inner, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                              shed=edge_shedding(settings, manager), retry_after_s=settings.retry_after_s,
                              max_header_bytes=settings.max_header_bytes, max_headers=settings.max_headers,
                              body_timeout_s=settings.body_timeout_s)
    return ServiceApp(api, fast, stack)
