"""The bare decoding engine under the same closed loop as the service: the served model's own scheduler (the
continuous `DecodeEngine`, or the static batcher) driven in-process, no HTTP, no JSON. `bench translate --engine`
sets the service's translations/s against it on the same texts and concurrency."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from bench.core import CallSource, Window, summarize
from bench.modes import KINDS
from bench.report import Series, progress


async def _engine_window(model: Any, source: CallSource, concurrency: int, seconds: float, warmup: float,
                         options_of: Any) -> Window:
    window = Window(concurrency, seconds, {})
    begin = time.perf_counter() + warmup
    end = begin + seconds

    async def worker(index: int) -> None:
        n = 0
        while (t0 := time.perf_counter()) < end:
            call = source(index, n)
            n += 1
            body = json.loads(call.body)
            options = options_of(body)
            error = None
            try:  # as the service's run_texts does: a translator's texts go as their sentences
                units, plan = model.segment(body["texts"], options)
                items, lengths = model.prepare(units, options)
                model.combine(body["texts"], list(await asyncio.gather(*model.queue.submit(items, lengths))), plan)
            except Exception as exc:  # counted, as the HTTP loop counts a failed request
                error = f"{type(exc).__name__}: {exc}"
            t1 = time.perf_counter()
            if begin <= t1 <= end:
                window.record(call.kind, call.texts, t1 - t0, error)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return window


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

    async def measure() -> list[Any]:
        model.start(settings, Metrics())
        points = []
        try:
            for level in levels:
                windows = [await _engine_window(model, source(), level, seconds, warmup, options_of)
                           for _ in range(repeats)]
                points += [summarize(series, windows)] + [summarize(series, windows, kind) for kind in KINDS]
                for p in points[-3:]:
                    progress(p)
        finally:
            await model.queue.close(30)
        return points

    return Series(asyncio.run(measure()), [])
