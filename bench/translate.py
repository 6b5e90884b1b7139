"""Translation: a mix of short and long requests against one service per scheduler mode (continuous, static,
none); translations/s and latency per concurrency, short and long requests apart."""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.core import Call, Point, read_texts
from bench.modes import MixedCalls, by_kind, multi30k_english, parse_modes, stat, write_outputs
from bench.modes import measure as measure_modes
from bench.report import Series, fmt, machine_info, machine_section, markdown_table, open_loop_section, ratio
from service.errors import UserError

SHORT_WORDS = (3, 8)
LONG_WORDS = (25, 40)


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


class MixedSource(MixedCalls):
    """Translation requests of one text each, short or long, at one beam size."""

    def __init__(self, short: Sequence[str], long: Sequence[str], model: str, beam_size: int, long_fraction: float,
                 seed: int) -> None:
        def calls(kind: str, texts: Sequence[str]) -> list[Call]:
            return [Call(kind, json.dumps({"model": model, "texts": [t], "beam_size": beam_size}).encode(), 1)
                    for t in texts]

        super().__init__(calls("short", short), calls("long", long), long_fraction, seed)


def check_answer(call: Call, body: Any) -> str | None:
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or len(results) != call.texts:
        return f"expected {call.texts} result(s), got {str(body)[:200]}"
    if not all(isinstance(r.get("translation"), str) for r in results):
        return f"a translation is not a string: {str(body)[:200]}"
    return None


ENGINE = "bare engine"  # the series of the in-process decoding engine (--engine)


def measure(a: argparse.Namespace, short: Sequence[str], long: Sequence[str], log_dir: Path) -> Series:
    def source() -> MixedSource:
        return MixedSource(short, long, a.model, a.beam_size, a.long_fraction, a.seed)

    series = measure_modes(a, "/v1/translate", source, check_answer, log_dir)
    if getattr(a, "engine", False) and a.repo:
        from bench.engine_loop import engine_points
        from service.engine.repository import resolve_version_dir

        series += engine_points(ENGINE, resolve_version_dir(a.repo / a.model), a.model, source, [a.ratio_level],
                                a.seconds, a.warmup, a.repeats, {"response_cache_entries": 0})
    return series


def results_table(points: Sequence[Point]) -> str:
    rows = [[p.series, str(p.level), fmt(p.throughput, 2), fmt(s.throughput, 2), fmt(s.p50_ms), fmt(s.p99_ms),
             fmt(lg.throughput, 2), fmt(lg.p50_ms), fmt(lg.p99_ms), f"{p.errors}/{p.requests}"]
            for p, s, lg in by_kind(points)]
    return markdown_table(["mode", "concurrency", "translations/s", "short/s", "short p50 ms", "short p99 ms",
                           "long/s", "long p50 ms", "long p99 ms", "errors/requests"], rows)


def ratio_table(points: Sequence[Point], level: int) -> str:
    def get(series: str, kind: str, name: str) -> float:
        return stat(points, series, level, kind, name)

    rows = [[f"translations/s, {other}", ratio(get("continuous", "all", "throughput"), get(other, "all", "throughput"))]
            for other in ("static", "none")]
    rows += [[f"{kind} {name[:3]} latency vs static", ratio(get("continuous", kind, name), get("static", kind, name))]
             for kind in ("short", "long") for name in ("p50_ms", "p99_ms")]
    text = markdown_table([f"continuous / other at concurrency {level}", "ratio"], rows)
    measured = {p.series for p in points}
    for mode in sorted(m for m in measured if f"{m}-full" in measured):  # the shortlist's speed-up, mode by mode
        rows = [["translations/s", ratio(get(mode, "all", "throughput"), get(f"{mode}-full", "all", "throughput"))]]
        rows += [[f"{kind} {name[:3]} latency", ratio(get(mode, kind, name), get(f"{mode}-full", kind, name))]
                 for kind in ("short", "long") for name in ("p50_ms", "p99_ms")]
        text += "\n" + markdown_table([f"{mode} with the shortlist / without at concurrency {level}", "ratio"], rows)
    if ENGINE in measured and "continuous" in measured:
        rows = [["translations/s", ratio(get("continuous", "all", "throughput"), get(ENGINE, "all", "throughput"))]]
        rows += [[f"{kind} {name[:3]} latency", ratio(get("continuous", kind, name), get(ENGINE, kind, name))]
                 for kind in ("short", "long") for name in ("p50_ms", "p99_ms")]
        text += "\n" + markdown_table([f"service (continuous) / {ENGINE} at concurrency {level}", "ratio"], rows)
    return text


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
    a.modes = parse_modes(a.modes)
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
    write_outputs(a, "translate", text, {}, series, f"translation ({a.model}), beam {a.beam_size}")
