"""Scheduler modes compared: a mix of short and long requests against one service per mode (continuous, static,
none), a closed loop per concurrency with short and long requests apart, then the open loop. What `bench translate`
and `bench generate` share; each gives its calls, its answer check and its report."""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.core import Call, CallSource, Check, Point, checked, open_loop_points, run_closed_loop, summarize
from bench.report import Series, find, plot, plot_offered_load, progress, series_json
from service.errors import UserError

MODES = ("continuous", "static", "none")
KINDS = ("short", "long")
MULTI30K_ENGLISH = ("test_2016_flickr.en.gz", "val.en.gz")
MULTI30K_TEST = MULTI30K_ENGLISH[:1]


def multi30k_english(data_dir: Path | None = None, names: Sequence[str] = MULTI30K_ENGLISH) -> list[str]:
    """English sentences of Multi30k's test2016 and validation splits (no training sentence), or of `names`."""
    if data_dir is None:
        from training.recipes import default_multi30k_dir

        data_dir = default_multi30k_dir()
    sentences = []
    for name in names:
        path = data_dir / name
        if not path.is_file():
            raise UserError(f"{path}: missing; set SEQSERVE_MULTI30K_DIR or pass --texts-file")
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            sentences += [line.strip() for line in fh if line.strip()]
    return sentences


FULL = "-full"  # a mode's suffix: the model's lexical shortlist turned off (SEQSERVE_NO_SHORTLIST)


def parse_modes(text: str) -> list[str]:
    """'continuous,none' -> ['continuous', 'none']: a non-empty subset of MODES, each also as MODE-full (decoding
    over the whole vocabulary, for a translator that ships a shortlist)."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or {m.removesuffix(FULL) for m in modes} - set(MODES):
        raise UserError(f"--modes takes a comma-separated subset of {', '.join(MODES)} (each also as MODE{FULL}: "
                        "without the model's shortlist)")
    return modes


class MixedCalls:
    """Each worker draws short or long calls from its own seeded generator: every mode gets the same mix."""

    def __init__(self, short: Sequence[Call], long: Sequence[Call], long_fraction: float, seed: int) -> None:
        self.short, self.long = list(short), list(long)
        self.long_fraction, self.seed = long_fraction, seed
        self.rngs: dict[int, random.Random] = {}

    def __call__(self, worker: int, n: int) -> Call:
        rng = self.rngs.setdefault(worker, random.Random(self.seed * 100_003 + worker))
        pool = self.long if rng.random() < self.long_fraction else self.short
        return pool[rng.randrange(len(pool))]


def service_points(series: str, endpoint: str, source: Callable[[], CallSource], check: Check,
                   a: argparse.Namespace) -> Series:
    """The closed loop at each concurrency (all requests, then short and long apart), then the open loop at
    fractions of the best requests/s it reached; `source` makes a fresh call source for each window."""
    closed = []
    for level in a.levels:
        windows = [run_closed_loop(endpoint, source(), level, a.seconds, warmup=a.warmup, check=check)
                   for _ in range(a.repeats)]
        closed.append(checked(summarize(series, windows)))
        closed += [summarize(series, windows, kind) for kind in KINDS]
        for p in closed[-3:]:
            progress(p)
    capacity = max(p.throughput for p in closed if p.kind == "all")  # requests/s: one text per request
    opened = open_loop_points(series, endpoint, source(), capacity, a.load_fractions, seconds=a.seconds,
                              warmup=a.warmup, repeats=a.repeats, check=check, kinds=KINDS)
    for p in opened:
        progress(p, "offered")
    return Series(closed, opened)


def measure(a: argparse.Namespace, path: str, source: Callable[[], CallSource], check: Check,
            log_dir: Path) -> Series:
    """The service at --url, then (with --repo) one `seqserve serve` per mode in a.modes, one at a time."""
    points = Series([], [])
    if a.url:
        points += service_points("service at --url", f"{a.url.rstrip('/')}{path}", source, check, a)
    if a.repo:
        from bench.server import ServiceProcess

        for mode in a.modes:
            settings = {"no_shortlist": a.model} if mode.endswith(FULL) else {}
            with ServiceProcess(a.repo, log_dir / f"serve-{mode}.log", models=a.model,
                                scheduler=mode.removesuffix(FULL), **settings) as server:
                points += service_points(mode, f"{server.url}{path}", source, check, a)
    return points


def by_kind(points: Sequence[Point]) -> list[tuple[Point, Point, Point]]:
    """(all, short, long) for each series and level measured, in the order measured."""
    rows = []
    for p in (p for p in points if p.kind == "all"):
        s, lg = find(points, p.series, p.level, "short"), find(points, p.series, p.level, "long")
        assert s is not None and lg is not None
        rows.append((p, s, lg))
    return rows


def stat(points: Sequence[Point], series: str, level: int, kind: str, name: str) -> float:
    """A point's statistic (throughput, p50_ms, p99_ms), or NaN when that point was not measured."""
    p = find(points, series, level, kind)
    return float(getattr(p, name)) if p else math.nan


def write_outputs(a: argparse.Namespace, name: str, text: str, figures: dict[str, object], series: Series,
                  title: str) -> None:
    """The report, its figures and plots in --out (nothing without it): `name`.md, .json, .png and -load.png."""
    if not a.out:
        return
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{name}.md").write_text(text, encoding="utf-8")
    (a.out / f"{name}.json").write_text(json.dumps({**series_json(series), **figures}, indent=1) + "\n",
                                        encoding="utf-8")
    plot(series.closed, a.out / f"{name}.png", title=title, latency_kinds=KINDS)
    if series.opened:
        plot_offered_load(series.opened, a.out / f"{name}-load.png", title=title, latency_kinds=KINDS)
    sys.stderr.write(f"bench {name}: wrote {a.out}/{name}.md, {name}.json and the PNG plots\n")
