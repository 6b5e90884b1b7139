"""FastAPI dependencies and request helpers: the model manager, the model a request reaches, the API-key checks.

All are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per
dependency per request, which on the hot path cost more than the model itself."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request

from service import tracing
from service.errors import UserError
from service.serving.manager import ModelManager
from service.serving.served import ServedModel
from service.settings import Settings


class Unauthorized(UserError):
    """401: a key is configured and the request did not present it."""


class Forbidden(UserError):
    """403: the endpoint is disabled by configuration."""


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.manager
    return manager


def reach(request: Request, name: str | None, version: int | None = None, kind: str | None = None) -> ServedModel:
    """The model a request asks for (`ModelManager.get`), recorded on the request for its metrics and logs."""
    manager: ModelManager = request.app.state.manager
    model = manager.get(name, version, kind)
    request.state.model, request.state.version = model.name, model.version
    if tracing.enabled():
        tracing.annotate(model.name, model.version)
    return model


def _presented_key(headers: Mapping[str, str]) -> str:
    """The key from `Authorization: Bearer KEY` or `X-API-Key` (headers keyed in lower case)."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key", "")


def key_matches(headers: Mapping[str, str], expected: str) -> bool:
    """Constant-time comparison of the presented key with the expected one."""
    return hmac.compare_digest(_presented_key(headers).encode(), expected.encode())


def _check_key(request: Request, expected: str) -> None:
    if not key_matches(request.headers, expected):
        raise Unauthorized("missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')")


async def require_inference_key(request: Request) -> None:
    key = _settings(request).api_key
    if key:
        _check_key(request, key)


async def require_control_key(request: Request) -> None:
    settings = _settings(request)
    if not settings.model_control_enabled:
        raise Forbidden("model control is disabled; set SEQSERVE_CONTROL_API_KEY or SEQSERVE_ENABLE_MODEL_CONTROL")
    if settings.control_api_key:
        _check_key(request, settings.control_api_key)


ManagerDep = Annotated[ModelManager, Depends(get_manager)]
