"""The one table from errors to HTTP answers, used by the fast routes and by the framework's exception handlers."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.api.deps import Forbidden, Unauthorized
from service.api.schemas import ErrorBody
from service.batching.queue import DeadlineExceeded, Refused
from service.engine.repository import RepositoryError
from service.errors import UserError
from service.serving.inference import ClientGone, InvalidInput, TooLarge
from service.serving.manager import ModelNotFound, ModelNotReady


class UnsupportedMedia(InvalidInput):
    """415: the body is not JSON by its Content-Type."""


class MalformedBody(InvalidInput):
    """400: the body does not parse."""


class BodyTooLarge(UserError):
    """413: a body without Content-Length grew past the limit while it was read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds max_body_bytes={limit}")


class BodyTimeout(UserError):
    """408: the body did not arrive in full within the bound."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"the request body did not arrive within body_timeout_s={limit:g}")


# First match wins: subclasses before their bases.
STATUS: list[tuple[type[Exception], int]] = [
    (MalformedBody, 400), (UnsupportedMedia, 415), (InvalidInput, 422), (TooLarge, 413), (BodyTooLarge, 413),
    (BodyTimeout, 408), (Unauthorized, 401), (Forbidden, 403), (ModelNotFound, 404), (ModelNotReady, 503),
    (Refused, 503), (DeadlineExceeded, 504), (RepositoryError, 404), (ClientGone, 499), (ClientDisconnect, 499),
    (UserError, 400),
]
FRAMEWORK_MESSAGES = {404: "no such endpoint", 405: "method not allowed"}

RESPONSES: dict[int | str, dict[str, Any]] = {  # for OpenAPI
    code: {"model": ErrorBody, "description": text} for code, text in {
        400: "malformed body (not UTF-8 JSON)", 401: "missing or wrong API key",
        403: "endpoint disabled by configuration", 404: "unknown model or version", 413: "a size limit was exceeded",
        415: "body is not JSON, or is compressed", 431: "too many or too large request headers",
        408: "the body did not arrive within body_timeout_s", 422: "invalid request (the message says which field)",
        500: "internal error (quote the request id)", 503: "queue full or model not ready (see Retry-After)",
        504: "timeout expired before compute"}.items()
}


def error_response(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    return JSONResponse({"error": message, "request_id": request_id}, status_code=status, headers=headers)


def describe(errors: list[Any]) -> str:
    """A pydantic error list as one line: where (dotted, 'body' for the whole body) and what."""
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return f"{where}: {first['msg']}"


def internal_error(exc: Exception) -> str:
    """The message of a 500: the error's type only (its text may hold internals); the log has the rest."""
    return f"internal error ({type(exc).__name__}); quote the request id"


async def _internal(request: Request, exc: Exception) -> Response:
    return error_response(request, 500, internal_error(exc))


def response_for(request: Request, exc: Exception) -> Response | None:
    """Our answer to `exc`, or None for an error we did not foresee (the middleware logs it and answers 500)."""
    status = next((code for cls, code in STATUS if isinstance(exc, cls)), None)
    if status is None:
        return None
    message = "client closed the request" if status == 499 else str(exc)
    headers = {"Retry-After": str(request.app.state.settings.retry_after_s)} if status == 503 else None
    return error_response(request, status, message, headers)


async def _known(request: Request, exc: Exception) -> Response:
    response = response_for(request, exc)
    assert response is not None  # registered for the table's classes only
    return response


async def _validation(request: Request, exc: RequestValidationError) -> Response:
    """The framework's own checks (path parameters) in our shape."""
    return error_response(request, 422, describe(list(exc.errors())))


async def _framework(request: Request, exc: StarletteHTTPException) -> Response:
    """Framework errors (unknown route, wrong method) in our shape."""
    message = FRAMEWORK_MESSAGES.get(exc.status_code, str(exc.detail))
    return error_response(request, exc.status_code, message, getattr(exc, "headers", None))


def install(app: FastAPI) -> None:
    """The table as the framework's exception handlers, so both paths answer alike."""
    for cls, _ in STATUS:
        app.add_exception_handler(cls, _known)
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _framework)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal)  # answered here; the service middleware logs it
