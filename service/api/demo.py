"""The demo page at `/`: plain HTML and JavaScript that call the REST API from the browser."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

STATIC = resources.files("service") / "static"
MEDIA_TYPES = {"index.html": "text/html; charset=utf-8", "demo.js": "text/javascript; charset=utf-8",
               "demo.css": "text/css; charset=utf-8"}

router = APIRouter(include_in_schema=False)


def _file(name: str) -> Response:
    # A fixed allow-list, so a path parameter can never reach outside the static folder.
    if name not in MEDIA_TYPES:
        raise HTTPException(404, "not found")
    return Response((STATIC / name).read_bytes(), media_type=MEDIA_TYPES[name],
                    headers={"Cache-Control": "no-cache"})


@router.get("/")
async def demo_page() -> Response:
    return _file("index.html")


@router.get("/static/{name}")
async def demo_asset(name: str) -> Response:
    return _file(name)
