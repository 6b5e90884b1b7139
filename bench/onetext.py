"""One text per request: texts/s and latency of the service per concurrency, beside the bare engine per batch size,
for the fp32 version and its int8 variant (when the repository has one, or one can be quantized). The machinery
`bench classify` and `bench tag` share; each gives a `Workload` (its path, answer check, engine call, texts)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import wrk
from bench.core import (
    Call,
    CallSource,
    Check,
    Point,
    checked,
    function_loop,
    open_loop_points,
    run_closed_loop,
    summarize,
)
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
    points_table,
    progress,
    ratio,
    series_json,
)
from service.engine.repository import read_config, versions
from service.errors import UserError

Engine = Callable[[Path, dict[str, Any]], Callable[[list[str]], object]]  # (version dir, config) -> a batch call
TextLoader = Callable[[argparse.Namespace, Path | None], tuple[list[str], str]]  # (args, model dir) -> texts


@dataclass(frozen=True)
class Workload:
    """What differs between the one-text-per-request benchmarks."""

    name: str  # the subcommand: `bench <name>`; also the report's file stem and the temporary folder's prefix
    path: str  # the endpoint, e.g. "/v1/classify"
    title: str  # the report's heading
    noun: str  # for plot titles, e.g. "classification"
    bare: str  # how the report describes the bare series' call, e.g. "`ClassifierRuntime.predict` (...)"
    check: Check  # of each answer (aiohttp: every one; wrk: a spot check of 32 before each series)
    engine: Engine
    texts: TextLoader
    batching: str = "dynamic batching"  # how the service batches this kind's requests, for the report


@dataclass(frozen=True)
class Variant:
    label: str  # "fp32" or "int8"
    version_dir: Path


def find_variants(model_dir: Path) -> list[Variant]:
    """The latest fp32 version and, if there is one, the latest int8 version (made from it, preferably)."""
    configs = {v: read_config(model_dir / str(v)) for v in versions(model_dir)}
    fp32 = [v for v, c in configs.items() if not c.get("quantization")]
    int8 = [v for v, c in configs.items() if c.get("quantization")]
    if not fp32 and not int8:
        raise UserError(f"{model_dir}: no model versions")
    found = []
    if fp32:
        found.append(Variant("fp32", model_dir / str(fp32[-1])))
    if int8:
        made_from_it = [v for v in int8 if fp32 and configs[v]["quantization"].get("from_version") == fp32[-1]]
        found.append(Variant("int8", model_dir / str((made_from_it or int8)[-1])))
    return found


def single_version_repo(root: Path, model: str, variant: Variant) -> Path:
    """A repository holding only this version (a symlink), so that the service serves exactly it."""
    repo = root / f"repo-{variant.label}"
    (repo / model).mkdir(parents=True, exist_ok=True)
    link = repo / model / variant.version_dir.name
    if not link.exists():
        link.symlink_to(variant.version_dir.resolve(), target_is_directory=True)
    return repo


def text_calls(texts: Sequence[str], model: str) -> list[Call]:
    """One call per text: `{"model": ..., "texts": [text]}`, the body /v1/classify and /v1/tag both take."""
    return [Call("all", json.dumps({"model": model, "texts": [t]}).encode(), 1) for t in texts]


def text_source(texts: Sequence[str], model: str) -> CallSource:
    calls = text_calls(texts, model)
    return lambda worker, n: calls[(worker * 7919 + n) % len(calls)]  # workers start at different texts


def generator(a: argparse.Namespace) -> str:
    """The closed loop's load generator: wrk when asked or (auto) when installed, else aiohttp."""
    if a.generator == "auto":
        return "wrk" if wrk.available() else "aiohttp"
    return str(a.generator)


def service_points(w: Workload, series: str, url: str, texts: Sequence[str], a: argparse.Namespace) -> Series:
    """The closed loop at each concurrency, then the open loop at fractions of the best throughput it reached."""
    endpoint = f"{url.rstrip('/')}{w.path}"
    closed, calls = [], text_calls(texts, a.model) if generator(a) == "wrk" else None
    if calls is not None:
        wrk.spot_check(endpoint, calls, w.check)
    for level in a.levels:
        if calls is not None:
            windows = [wrk.wrk_closed_loop(endpoint, calls, level, a.seconds, warmup=a.warmup)
                       for _ in range(a.repeats)]
        else:
            windows = [run_closed_loop(endpoint, text_source(texts, a.model), level, a.seconds,
                                       warmup=a.warmup, check=w.check) for _ in range(a.repeats)]
        closed.append(checked(summarize(series, windows)))
        progress(closed[-1])
    capacity = max(p.throughput for p in closed)  # requests/s: one text per request
    opened = open_loop_points(series, endpoint, text_source(texts, a.model), capacity, a.load_fractions,
                              seconds=a.seconds, warmup=a.warmup, repeats=a.repeats, check=w.check)
    for p in opened:
        progress(p, "offered")
    return Series(closed, opened)


def bare_points(w: Workload, variant: Variant, texts: Sequence[str], a: argparse.Namespace) -> list[Point]:
    call = w.engine(variant.version_dir, read_config(variant.version_dir))
    points = []
    for batch in a.levels:
        windows = [function_loop(call, texts, batch, a.seconds, warmup=a.warmup) for _ in range(a.repeats)]
        points.append(summarize(f"bare {variant.label}", windows))
        progress(points[-1])
    return points


def served_version(url: str, model: str) -> int:
    try:
        response = httpx.get(f"{url.rstrip('/')}/v2/models/{model}", timeout=10)
    except httpx.HTTPError as exc:
        raise UserError(f"cannot reach {url} ({type(exc).__name__}: {exc})") from None
    if response.status_code != 200:
        raise UserError(f"{url} does not serve model {model!r} (HTTP {response.status_code})")
    return int(response.json()["versions"][0])


def with_int8(variants: list[Variant], log_dir: Path, name: str = "classify") -> list[Variant]:
    """The variants plus an int8 one quantized from the fp32 version into log_dir, when the repository has none."""
    if any(v.label == "int8" for v in variants) or not variants:
        return variants
    try:
        from training.quantize import quantize_version
    except ImportError as exc:  # the serve-only install: no onnx package for the quantizer
        sys.stderr.write(f"bench {name}: no int8 variant ({exc}); install the train extra to compare\n")
        return variants
    source = variants[0].version_dir
    try:
        target = quantize_version(source, version=1, out=log_dir / "int8" / source.parent.name)
    except UserError as exc:  # e.g. the training data to calibrate on is not on this machine
        sys.stderr.write(f"bench {name}: no int8 variant ({exc})\n")
        return variants
    sys.stderr.write(f"bench {name}: quantized {variants[0].version_dir} to {target} for the int8 series\n")
    return [*variants, Variant("int8", target)]


def measure(w: Workload, a: argparse.Namespace, texts: Sequence[str], log_dir: Path) -> Series:
    """One heavy thing at a time: each service is stopped before the next series starts."""
    variants = find_variants(a.repo / a.model) if a.repo else []
    if not a.no_int8:
        variants = with_int8(variants, log_dir, w.name)
    points = Series([], [])
    if a.url:
        version = served_version(a.url, a.model)
        label = next((v.label for v in variants if int(v.version_dir.name) == version), f"v{version}")
        points += service_points(w, f"service {label}", a.url, texts, a)
    for variant in variants:
        if not a.url:
            repo = single_version_repo(log_dir, a.model, variant)
            from bench.server import ServiceProcess

            with ServiceProcess(repo, log_dir / f"serve-{variant.label}.log", models=a.model) as server:
                points += service_points(w, f"service {variant.label}", server.url, texts, a)
        if not a.no_bare:
            points += Series(bare_points(w, variant, texts, a), [])
    return points


def ratio_rows(points: Sequence[Point], levels: Sequence[int]) -> list[list[str]]:
    rows = []
    for level in levels:
        def tput(series: str, lv: int = level) -> float:
            p = find(points, series, lv)
            return p.throughput if p else float("nan")

        rows.append([str(level), ratio(tput("service fp32"), tput("bare fp32")),
                     ratio(tput("service int8"), tput("bare int8")),
                     ratio(tput("service int8"), tput("service fp32")), ratio(tput("bare int8"), tput("bare fp32"))])
    return rows


GENERATORS = {
    "wrk": "wrk (C; every answer's status counted, 32 answers checked before each series);",
    "aiohttp": "aiohttp (Python; every answer checked);",
}


def report(w: Workload, series: Series, a: argparse.Namespace, source: str, info: dict[str, str]) -> str:
    points = series.closed
    fp32 = next((p for p in points if p.series == "service fp32" and p.level == max(a.levels)), None)
    return "\n".join([
        f"# {w.title}", "",
        f"Texts: {source}; one text per request. Each level: {a.repeats} windows of {a.seconds:g} s after "
        f"{a.warmup:g} s warm-up; the tables show medians. Service: `seqserve serve` with default settings "
        f"({w.batching}, onnxruntime choosing its threads), one model loaded. Bare: {w.bare} on batches of N "
        "texts back to back, no HTTP, onnxruntime choosing its threads (one per core): the engine's limit on this "
        "machine.",
        "",
        f"Load generator for the closed loop: {GENERATORS[generator(a)]} N connections, one request each in "
        "flight. It runs on the same cores as the service, so service figures include its cost; the bare series "
        "has no such competitor. The open loop uses aiohttp, whatever the closed loop used; with wrk in the "
        "closed loop, its rates near the closed loop's best may exceed what aiohttp and the service together "
        "can run on small machines (aiohttp spends more CPU per request), and the latency there shows both.",
        "", points_table(points, "concurrency / batch"),
        "## Ratios (throughput; concurrency N against batch size N)", "",
        markdown_table(["N", "service/bare fp32", "service/bare int8", "int8/fp32 service", "int8/fp32 bare"],
                       ratio_rows(points, a.levels)),
        f"Service fp32 at concurrency {max(a.levels)}: "
        f"{fmt(fp32.throughput) if fp32 else 'n/a'} texts/s.", "",
        f"![throughput and latency]({w.name}.png)" if a.out else "", "",
        open_loop_section(series.opened, a, f"{w.name}-load.png" if a.out else None), machine_section(info)])


def run(w: Workload, a: argparse.Namespace) -> None:
    texts, source = w.texts(a, a.repo / a.model if a.repo else None)
    info = machine_info()
    log_dir = Path(tempfile.mkdtemp(prefix=f"seqserve-bench-{w.name}-"))
    sys.stderr.write(f"bench {w.name}: {len(texts)} texts; service logs in {log_dir}\n")
    series = measure(w, a, texts, log_dir)
    text = report(w, series, a, source, info)
    sys.stdout.write(text)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / f"{w.name}.md").write_text(text, encoding="utf-8")
        (a.out / f"{w.name}.json").write_text(json.dumps(series_json(series), indent=1) + "\n", encoding="utf-8")
        plot(series.closed, a.out / f"{w.name}.png",
             title=f"{w.noun} ({a.model}); bare: batch size on the x axis")
        if series.opened:
            plot_offered_load(series.opened, a.out / f"{w.name}-load.png", title=f"{w.noun} ({a.model})")
        sys.stderr.write(f"bench {w.name}: wrote {a.out}/{w.name}.md, {w.name}.json and the PNG plots\n")
