"""The bare decoding engine under the same closed loop as the service: the served model's own scheduler (the
continuous `DecodeEngine`, or the static batcher) driven in-process, no HTTP, no JSON. `bench translate --engine`
sets the service's translations/s against it on the same texts and concurrency."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from bench.core import Call, closed_workers, summarize
from bench.modes import KINDS
from bench.report import Series, progress


def _engine_send(model: Any, options_of: Any) -> Any:
    """A call answered by the served model's own queue, as the service's run_texts does it: a translator's texts go
    as their sentences."""
    async def send(call: Call) -> str | None:
        body = json.loads(call.body)
        options = options_of(body)
        try:
            units, plan = model.segment(body["texts"], options)
            items, lengths = model.prepare(units, options)
            model.combine(body["texts"], list(await asyncio.gather(*model.queue.submit(items, lengths))), plan)
        except Exception as exc:  # counted, as the HTTP loop counts a failed request
            return f"{type(exc).__name__}: {exc}"
        return None

    return send


def engine_points(series: str, version_dir: Path, name: str, source: Any, levels: list[int], seconds: float,
                  warmup: float, repeats: int, settings_overrides: dict[str, Any] | None = None) -> Series:
    """Closed-loop points (all, short, long per level) of the model served in this process without HTTP."""
    from service.api.translate import TranslateRequest, decode_options
    from service.engine.repository import read_config
    from service.metrics import Metrics
    from service.serving.kinds import build_model
    from service.settings import Settings

    settings = Settings(**(settings_overrides or {}))

    def options_of(body: dict[str, Any]) -> Any:
        return decode_options(TranslateRequest(**{k: v for k, v in body.items() if k != "model"}), settings)

    model = build_model(name, version_dir, read_config(version_dir), settings)
    send = _engine_send(model, options_of)

    async def measure() -> list[Any]:
        model.start(settings, Metrics())
        points = []
        try:
            for level in levels:
                windows = [await closed_workers(send, source(), level, seconds, warmup) for _ in range(repeats)]
                points += [summarize(series, windows)] + [summarize(series, windows, kind) for kind in KINDS]
                for p in points[-3:]:
                    progress(p)
        finally:
            await model.queue.close(30)
        return points

    return Series(asyncio.run(measure()), [])
