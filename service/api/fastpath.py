"""The fast routes: an exact-path dispatcher in front of the FastAPI app.

A classifier request carries a sentence or two, so its compute is a fraction of a millisecond in a batch, and
the event loop's share of each request decides throughput. Profiled at concurrency 32 (py-spy, GIL samples),
FastAPI's per-request layers (routing, dependency resolution, its body machinery) took over half of the
loop's time. So the hot endpoints are plain `async def (request) -> Response` functions (`FastRoute`), which
this dispatcher calls when the method and path match; every other request goes on to the FastAPI app, which
also declares the same functions as routes (for /docs, and for path parameters only it validates). Errors
raised by a fast route are answered from the same table as the framework's (`service.api.errors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from starlette.types import Receive, Scope, Send

from service.api.errors import response_for
from service.api.kind import FastRoute


class FastPath:
    """POST requests whose path is a fast route's go to its handler; the rest to `app`."""

    def __init__(self, app: FastAPI, routes: Sequence[FastRoute]) -> None:
        self.app = app
        self.exact: dict[str, FastRoute] = {r.path: r for r in routes if r.pattern is None}
        self.patterns = [r for r in routes if r.pattern is not None]

    def find(self, path: str) -> tuple[FastRoute, dict[str, Any]] | None:
        """The fast route for `path` and its parameters, or None (the framework's route, if any, answers)."""
        route = self.exact.get(path)
        if route is not None:
            return route, {}
        for route in self.patterns:
            assert route.pattern is not None
            match = route.pattern.fullmatch(path)
            if match is not None and route.accepts(params := match.groupdict()):
                return route, params
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.find(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        route, params = found
        scope["app"], scope["path_params"] = self.app, params  # what the framework's routing would set
        scope.setdefault("state", {})["endpoint"] = route.path
        request = Request(scope, receive)
        try:
            response = await route.handler(request)
        except Exception as exc:
            answer = response_for(request, exc)
            if answer is None:
                raise  # ServiceMiddleware logs it and answers 500 with the request id
            response = answer
        await response(scope, receive, send)

