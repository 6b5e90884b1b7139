"""What each model kind gives the API layer (`ApiKind`), and the fast routes' shape."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from service.settings import Settings

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class FastRoute:
    """A hot endpoint: a plain `async def (request) -> Response` that the dispatcher calls before the framework.

    `path` is the route template (and the metrics' endpoint label). A template with parameters has a `pattern`
    (named groups) and an `accepts` check: parameters it does not accept as they are go to the framework route
    of the same path, whose own validation answers."""

    path: str
    handler: Handler
    pattern: re.Pattern[str] | None = None
    accepts: Callable[[dict[str, Any]], bool] = lambda params: True


@dataclass(frozen=True)
class ApiKind:
    """A model kind's API: its routes (REST, for the framework and /docs), its hot routes, the v1 inference paths
    that reach a model of this kind (for shedding at the edge), the request bodies it documents, and how v2
    `parameters` become the options its served model takes."""

    kind: str
    router: APIRouter
    v1_paths: tuple[str, ...]
    v2_options: Callable[[dict[str, Any], Settings], Any]
    fast: tuple[FastRoute, ...] = ()
    bodies: tuple[type[BaseModel], ...] = field(default=())
