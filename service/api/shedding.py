"""Shedding at the edge: a request that can only get 503 gets it before its body is read or parsed."""

from __future__ import annotations

from starlette.types import Scope

from service.api.deps import key_matches
from service.api.kinds import V1_PATHS
from service.api.middleware import Shed
from service.api.v2 import INFER_PATH, INFER_VERSION_PATH, V2_INFER
from service.batching.queue import Refused
from service.serving.manager import ModelManager
from service.settings import Settings


def edge_shedding(settings: Settings, manager: ModelManager) -> Shed:
    """The model an inference request must reach, when its path alone says which (the model it names, or the
    only model of the endpoint's kind), asked by its own queue whether one more text fits. Anything less
    certain, or unauthenticated when keys are on, takes the normal path."""

    def shed(scope: Scope, headers: dict[str, str]) -> tuple[str, str] | None:
        if scope["method"] != "POST" or (settings.api_key and not key_matches(headers, settings.api_key)):
            return None
        if settings.cors_origins and "origin" in headers:
            return None  # a browser needs the CORS headers the inner middleware adds to read the 503
        path: str = scope["path"]
        if path in V1_PATHS:
            endpoint, model = path, manager.only(kind=V1_PATHS[path])
        elif match := V2_INFER.fullmatch(path):
            endpoint = INFER_PATH if match["number"] is None else INFER_VERSION_PATH
            model = manager.only(name=match["name"], version=match["number"])
        else:
            return None
        if model is None:
            return None
        try:
            model.queue.check(1)
        except Refused as refused:  # counted by the queue's gate
            scope["state"]["endpoint"] = endpoint
            return model.name, str(refused)
        return None

    return shed
