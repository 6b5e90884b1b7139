"""Translation: a mix of short and long requests against one service per scheduler mode (continuous, static,
none); translations/s and latency per concurrency, short and long requests apart."""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.core import Call, Point, checked, open_loop_points, read_texts, run_closed_loop, summarize
from bench.report import (
    Series,
    find,
    fmt,
    machine_info,
    machine_section,
    markdown_table,
    open_loop_section,
    plot,
    plot_offered_load,
    progress,
    ratio,
    series_json,
)
from service.errors import UserError

MODES = ("continuous", "static", "none")
SHORT_WORDS = (3, 8)
LONG_WORDS = (25, 40)
KINDS = ("short", "long")
MULTI30K_ENGLISH = ("test_2016_flickr.en.gz", "val.en.gz")


def multi30k_english(data_dir: Path | None = None) -> list[str]:
    """English sentences of Multi30k's test2016 and validation splits (no training sentence)."""
    if data_dir is None:
        from training.recipes import default_multi30k_dir

        data_dir = default_multi30k_dir()
    sentences = []
    for name in MULTI30K_ENGLISH:
        path = data_dir / name
        if not path.is_file():
            raise UserError(f"{path}: missing; set SEQSERVE_MULTI30K_DIR or pass --texts-file")
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            sentences += [line.strip() for line in fh if line.strip()]
    return sentences


def short_and_long(sentences: Sequence[str], seed: int, want_long: int = 300) -> tuple[list[str], list[str]]:
    """Short texts of 3-8 words as they are; long texts of 25-40 words, joining consecutive sentences of a
    shuffled pool when too few sentences are that long on their own."""
    def words(s: str) -> int:
        return len(s.split())

    short = [s for s in sentences if SHORT_WORDS[0] <= words(s) <= SHORT_WORDS[1]]
    long = [s for s in sentences if LONG_WORDS[0] <= words(s) <= LONG_WORDS[1]]
    pool = [s for s in sentences if words(s) < LONG_WORDS[0]]
    random.Random(seed).shuffle(pool)
    parts: list[str] = []
    for sentence in pool:
        if len(long) >= want_long:
            break
        parts.append(sentence)
        total = sum(words(p) for p in parts)
        if total >= LONG_WORDS[0]:
            if total <= LONG_WORDS[1]:
                long.append(" ".join(parts))
            parts = []
    if not short or not long:
        raise UserError(f"need texts of {SHORT_WORDS[0]}-{SHORT_WORDS[1]} words and material for "
                        f"{LONG_WORDS[0]}-{LONG_WORDS[1]} words; got {len(short)} short, {len(long)} long")
    return short, long


class MixedSource:
    """Each worker draws short or long requests from its own seeded generator: every mode gets the same mix."""

    def __init__(self, short: Sequence[str], long: Sequence[str], model: str, beam_size: int, long_fraction: float,
                 seed: int) -> None:
        def calls(kind: str, texts: Sequence[str]) -> list[Call]:
            return [Call(kind, json.dumps({"model": model, "texts": [t], "beam_size": beam_size}).encode(), 1)
                    for t in texts]

        self.short, self.long = calls("short", short), calls("long", long)
        self.long_fraction, self.seed = long_fraction, seed
        self.rngs: dict[int, random.Random] = {}

    def __call__(self, worker: int, n: int) -> Call:
        rng = self.rngs.setdefault(worker, random.Random(self.seed * 100_003 + worker))
        pool = self.long if rng.random() < self.long_fraction else self.short
        return pool[rng.randrange(len(pool))]


def check_answer(call: Call, body: Any) -> str | None:
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or len(results) != call.texts:
        return f"expected {call.texts} result(s), got {str(body)[:200]}"
    if not all(isinstance(r.get("translation"), str) for r in results):
        return f"a translation is not a string: {str(body)[:200]}"
    return None


def service_points(series: str, url: str, short: Sequence[str], long: Sequence[str],
                   a: argparse.Namespace) -> Series:
    """The closed loop at each concurrency, then the open loop at fractions of the best throughput it reached."""
    endpoint = f"{url.rstrip('/')}/v1/translate"

    def source() -> MixedSource:
        return MixedSource(short, long, a.model, a.beam_size, a.long_fraction, a.seed)

    closed = []
    for level in a.levels:
        windows = [run_closed_loop(endpoint, source(), level, a.seconds, warmup=a.warmup, check=check_answer)
                   for _ in range(a.repeats)]
        closed.append(checked(summarize(series, windows)))
        closed += [summarize(series, windows, kind) for kind in KINDS]
        for p in closed[-3:]:
            progress(p)
    capacity = max(p.throughput for p in closed if p.kind == "all")  # requests/s: one text per request
    opened = open_loop_points(series, endpoint, source(), capacity, a.load_fractions, seconds=a.seconds,
                              warmup=a.warmup, repeats=a.repeats, check=check_answer, kinds=KINDS)
    for p in opened:
        progress(p, "offered")
    return Series(closed, opened)


def measure(a: argparse.Namespace, short: Sequence[str], long: Sequence[str], log_dir: Path) -> Series:
    points = Series([], [])
    if a.url:
        points += service_points("service at --url", a.url, short, long, a)
    if a.repo:
        from bench.server import ServiceProcess

        for mode in a.modes:
            with ServiceProcess(a.repo, log_dir / f"serve-{mode}.log", models=a.model, scheduler=mode) as server:
                points += service_points(mode, server.url, short, long, a)
    return points


def results_table(points: Sequence[Point]) -> str:
    rows = []
    for p in (p for p in points if p.kind == "all"):
        s, lg = find(points, p.series, p.level, "short"), find(points, p.series, p.level, "long")
        assert s is not None and lg is not None
        rows.append([p.series, str(p.level), fmt(p.throughput, 2), fmt(s.throughput, 2), fmt(s.p50_ms),
                     fmt(s.p99_ms), fmt(lg.throughput, 2), fmt(lg.p50_ms), fmt(lg.p99_ms), f"{p.errors}/{p.requests}"])
    return markdown_table(["mode", "concurrency", "translations/s", "short/s", "short p50 ms", "short p99 ms",
                           "long/s", "long p50 ms", "long p99 ms", "errors/requests"], rows)


def ratio_table(points: Sequence[Point], level: int) -> str:
    def get(series: str, kind: str, stat: str) -> float:
        p = find(points, series, level, kind)
        return float(getattr(p, stat)) if p else float("nan")

    rows = [[f"translations/s, {other}", ratio(get("continuous", "all", "throughput"), get(other, "all", "throughput"))]
            for other in ("static", "none")]
    rows += [[f"{kind} {stat[:3]} latency vs static", ratio(get("continuous", kind, stat), get("static", kind, stat))]
             for kind in ("short", "long") for stat in ("p50_ms", "p99_ms")]
    return markdown_table([f"continuous / other at concurrency {level}", "ratio"], rows)


def report(series: Series, a: argparse.Namespace, source: str, counts: tuple[int, int],
           info: dict[str, str]) -> str:
    points = series.closed
    return "\n".join([
        "# Translation benchmark", "",
        f"Texts: {source}; {counts[0]} short ({SHORT_WORDS[0]}-{SHORT_WORDS[1]} words) and {counts[1]} long "
        f"({LONG_WORDS[0]}-{LONG_WORDS[1]} words, consecutive sentences joined where needed). Each request is one "
        f"text, long with probability {a.long_fraction:g}, beam size {a.beam_size}. Each level: {a.repeats} windows "
        f"of {a.seconds:g} s after {a.warmup:g} s warm-up; medians. One `seqserve serve` per scheduler mode "
        "(SEQSERVE_SCHEDULER), default settings otherwise. The load generator (aiohttp, closed loop) "
        "shares the cores with the service.", "",
        results_table(points), "## Scheduler modes compared", "",
        "Throughput ratios above 1 and latency ratios below 1 favour continuous batching.", "",
        ratio_table(points, a.ratio_level), "![throughput and latency](translate.png)" if a.out else "", "",
        open_loop_section(series.opened, a, "translate-load.png" if a.out else None), machine_section(info)])


def run(a: argparse.Namespace) -> None:
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if not a.modes or set(a.modes) - set(MODES):
        raise UserError(f"--modes takes a comma-separated subset of {', '.join(MODES)}")
    if a.beam_size < 1 or not 0 <= a.long_fraction <= 1:
        raise UserError("--beam-size must be >= 1 and --long-fraction within 0..1")
    sentences = read_texts(a.texts_file) if a.texts_file else multi30k_english()
    source = str(a.texts_file) if a.texts_file else "Multi30k English, test2016 and val splits"
    short, long = short_and_long(sentences, a.seed)
    info = machine_info()
    log_dir = Path(tempfile.mkdtemp(prefix="seqserve-bench-translate-"))
    sys.stderr.write(f"bench translate: {len(short)} short and {len(long)} long texts; service logs in {log_dir}\n")
    series = measure(a, short, long, log_dir)
    text = report(series, a, source, (len(short), len(long)), info)
    sys.stdout.write(text)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "translate.md").write_text(text, encoding="utf-8")
        (a.out / "translate.json").write_text(json.dumps(series_json(series), indent=1) + "\n", encoding="utf-8")
        title = f"translation ({a.model}), beam {a.beam_size}"
        plot(series.closed, a.out / "translate.png", title=title, latency_kinds=KINDS)
        if series.opened:
            plot_offered_load(series.opened, a.out / "translate-load.png", title=title, latency_kinds=KINDS)
        sys.stderr.write(f"bench translate: wrote {a.out}/translate.md, translate.json and the PNG plots\n")
