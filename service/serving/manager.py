"""Loads, swaps and unloads model versions; the only owner of the name -> served model map."""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.engine.repository import model_names, read_config, valid_name, versions
from service.errors import UserError
from service.metrics import Metrics
from service.serving.cache import ResponseCache
from service.serving.kinds import build_model
from service.serving.served import ServedModel
from service.settings import Settings

log = logging.getLogger("seqserve.models")


class ModelNotFound(UserError):
    """Unknown model or version (404)."""


class ModelNotReady(UserError):
    """The model exists but failed to load or is loading (503)."""


@dataclass
class Failure:
    version: int | None
    reason: str


def settle_heap() -> None:
    """Moves what is alive now (frameworks, loaded models) out of the cyclic collector's way.

    Left in its generations, every full collection walked all of it: under load, ~45 ms event-loop stalls
    several times in 10 s, which set the p99. Frozen, collections walk only what requests create. Run after
    start-up and whenever a retired version is released; unfreezing first lets that version's cycles be
    collected (one full collection, tens of milliseconds, per model change)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelManager:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.root: Path = settings.model_repository
        self.models: dict[str, ServedModel] = {}
        self.failures: dict[str, Failure] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self.cache = ResponseCache(settings.response_cache_entries, int(settings.response_cache_mb * 2**20), metrics)

    def names(self) -> list[str]:
        names = model_names(self.root)
        wanted = self.settings.models
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise UserError(f"invalid setting models (SEQSERVE_MODELS): {unknown} not in {self.root}")
        return [n for n in names if not wanted or n in wanted]

    async def load_all(self) -> None:
        for name in self.names():
            try:
                await self.load(name)
            except UserError:
                continue  # recorded in self.failures; the other models still serve

    def _model_dir(self, name: str) -> Path:
        if not valid_name(name) or not versions(self.root / name):
            raise ModelNotFound(f"unknown model {name!r}")
        return self.root / name

    async def load(self, name: str, version: int | None = None) -> ServedModel:
        """Build the new version off the loop, warm it up, then swap it in; the old one drains."""
        model_dir = self._model_dir(name)
        number = version if version is not None else versions(model_dir)[-1]
        if number not in versions(model_dir):
            raise ModelNotFound(f"model {name!r} has no version {number}")
        async with self._locks.setdefault(name, asyncio.Lock()):
            version_dir = model_dir / str(number)
            try:
                config = read_config(version_dir)
                model = await asyncio.to_thread(build_model, name, version_dir, config, self.settings)
            except Exception as exc:  # a broken model must not stop the others
                detail = str(exc).splitlines()[0] if str(exc) else ""
                reason = f"{type(exc).__name__}: {detail.replace(str(self.root), '<repository>')}"[:500]
                log.error("model %s version %s failed to load: %s", name, number, reason)
                self.failures[name] = Failure(number, reason)
                self.metrics.model_ready.labels(name).set(0)
                raise ModelNotReady(f"model {name!r} version {number} failed to load: {reason}") from None
            model.cache = self.cache
            model.start(self.settings, self.metrics)
            old = self.models.get(name)
            self.models[name] = model
            self.cache.drop_model(name, keep_version=number)  # answers of the version it replaces
            self.failures.pop(name, None)
            self.metrics.model_ready.labels(name).set(1)
            self.metrics.model_info.labels(name, str(number), model.kind, model.provider).set(1)
            log.info("model %s version %d ready (%s, %s)", name, number, model.kind, model.provider)
            if old is not None:
                self._retire(old)
            return model

    async def unload(self, name: str) -> None:
        if not valid_name(name):
            raise ModelNotFound(f"unknown model {name!r}")
        old = self.models.pop(name, None)
        self.failures.pop(name, None)
        if old is None:
            raise ModelNotFound(f"model {name!r} is not loaded")
        self.metrics.model_ready.labels(name).set(0)
        self.cache.drop_model(name)
        self._retire(old)

    def _retire(self, old: ServedModel) -> None:
        """Requests already queued on the old version finish there; then its resources go."""
        async def retire() -> None:
            await old.queue.close(self.settings.drain_timeout_s)
            self.metrics.model_info.remove(old.name, str(old.version), old.kind, old.provider)

        task = asyncio.get_running_loop().create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        task.add_done_callback(lambda _: settle_heap())  # the old version's objects are unreferenced by now

    def get(self, name: str | None, version: int | None = None, kind: str | None = None) -> ServedModel:
        if name is None:
            candidates = [m for m in self.models.values() if kind is None or m.kind == kind]
            if len(candidates) != 1:
                raise ModelNotFound(f"name a model: {len(candidates)} {kind or ''} models are loaded")
            return candidates[0]
        model = self.models.get(name)
        if model is None:
            if name in self.failures:
                raise ModelNotReady(f"model {name!r} is not ready: {self.failures[name].reason}")
            raise ModelNotFound(f"unknown model {name!r}")
        if version is not None and version != model.version:
            raise ModelNotFound(f"model {name!r} version {version} is not loaded (loaded: {model.version})")
        if kind is not None and model.kind != kind:
            raise ModelNotFound(f"model {name!r} is a {model.kind}, not a {kind}")
        return model

    def only(self, name: str | None = None, version: str | None = None, kind: str | None = None) -> ServedModel | None:
        """The one model a request could reach, known before its body is read: the named one (at the version
        asked for), or the only loaded model of `kind`; None when that is not certain."""
        if name is not None:
            model = self.models.get(name)
            return model if model is not None and (version is None or version == str(model.version)) else None
        candidates = [m for m in self.models.values() if kind is None or m.kind == kind]
        return candidates[0] if len(candidates) == 1 else None

    def index(self) -> list[dict[str, Any]]:
        rows = []
        for name in model_names(self.root):
            for number in versions(self.root / name):
                row: dict[str, Any] = {"name": name, "version": str(number), "state": "UNAVAILABLE"}
                if name in self.models and self.models[name].version == number:
                    row["state"] = "READY"
                elif name in self.failures and self.failures[name].version == number:
                    row["reason"] = self.failures[name].reason
                rows.append(row)
        return rows

    @property
    def ready(self) -> bool:
        return bool(self.models)

    async def close(self) -> None:
        for name in list(self.models):
            self._retire(self.models.pop(name))
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
