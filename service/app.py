"""Assembles the service, outermost first: the service middleware (request ids, limits, metrics, traces), CORS
when on, the fast-route dispatcher, then the FastAPI app with every route; settings, model manager and metrics are
made here once. The gRPC server (when a port is set) starts with the app, once the models are loaded, and stops
before they close."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from service import tracing
from service.api import demo, errors, grpc_v2, v2
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

    @property
    def grpc_port(self) -> int | None:
        """The bound gRPC port once started (SEQSERVE_GRPC_PORT, or the free one picked for 0), else None."""
        server: grpc_v2.GrpcServer | None = self.state.grpc
        return None if server is None else server.port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._stack(scope, receive, send)


def create_api(settings: Settings, manager: ModelManager, metrics: Metrics, provider: Any = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.load_all()
        if app.state.grpc is not None:
            await app.state.grpc.start()
        settle_heap()
        app.state.started = True
        log.info("ready: %s", ", ".join(f"{m.name} v{m.version}" for m in manager.models.values()) or "no models")
        yield
        app.state.started = False
        if app.state.grpc is not None:
            await app.state.grpc.stop()
        await manager.close()
        if provider is not None:
            provider.shutdown()  # exports what is left
        gc.unfreeze()

    api = FastAPI(title="seqserve", version=v2.SERVER_VERSION, lifespan=lifespan,
                  description="Recurrent NLP models (classification, translation) on ONNX Runtime. "
                              "REST under /v1, Open Inference Protocol v2 under /v2, metrics at /metrics.")
    api.state.settings, api.state.metrics, api.state.manager, api.state.started = settings, metrics, manager, False
    api.state.grpc = None
    if settings.grpc_port is not None:
        service = grpc_v2.InferenceService(settings, manager, metrics, lambda: bool(api.state.started))
        api.state.grpc = grpc_v2.GrpcServer(service, settings)
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


def tracer_provider(settings: Settings) -> Any:
    """An OpenTelemetry tracer provider exporting over OTLP in batches, when an endpoint is set; else None."""
    endpoint = settings.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") \
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    protocol = settings.otlp_protocol or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    exporter: Any
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        exporter = GrpcExporter(endpoint=settings.otlp_endpoint) if settings.otlp_endpoint else GrpcExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        given = settings.otlp_endpoint
        if given and not given.rstrip("/").endswith("/v1/traces"):  # a base URL, as the variable holds
            given = given.rstrip("/") + "/v1/traces"
        exporter = HttpExporter(endpoint=given) if given else HttpExporter()
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "seqserve"),
                                "service.version": v2.SERVER_VERSION})
    # Parent-based: a client's sampled flag decides; a request without a parent reaches the SDK only when
    # tracing.start_server_span drew it (settings.trace_sample_ratio), so the root sampler takes it.
    provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing: OTLP %s to %s, sampling %g of new traces", protocol, settings.otlp_endpoint or endpoint,
             settings.trace_sample_ratio)
    return provider


def create_app(settings: Settings, fast_routes: bool = True, provider: Any = None) -> ServiceApp:
    """`fast_routes=False` leaves every request to the framework's routes (the fast routes' twins). `provider`:
    an OpenTelemetry tracer provider to trace with (default: one for the settings' OTLP endpoint, or none)."""
    metrics = Metrics()
    manager = ModelManager(settings, metrics)
    owned = provider is None
    provider = provider if provider is not None else tracer_provider(settings)
    tracing.configure(None if provider is None else provider.get_tracer("seqserve", v2.SERVER_VERSION),
                      settings.trace_sample_ratio if owned else 1.0)  # a given provider samples by itself
    api = create_api(settings, manager, metrics, provider if owned else None)
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
