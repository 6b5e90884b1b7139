"""Benchmark output: the machine, markdown tables, ratios and plots (matplotlib imported only to plot)."""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.core import Point

LIBRARIES = ("onnxruntime", "numpy", "tokenizers", "fastapi", "uvicorn", "pydantic", "aiohttp")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, str]:
    """What a reader needs to compare figures: cores, CPU, load at the start, Python and library versions."""
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cores": str(os.cpu_count()),
            "cpu": cpu_model(), "platform": platform.platform(), "python": platform.python_version()}
    if hasattr(os, "getloadavg"):
        info["load average at start (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    for name in LIBRARIES:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    return info


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_section(info: dict[str, str]) -> str:
    return "## Machine\n\n" + markdown_table(["what", "value"], info.items())


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def ratio(numerator: float, denominator: float) -> str:
    """`a/b` as '1.23x', or 'n/a' when either side is missing or the denominator is zero."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return "n/a"
    return f"{numerator / denominator:.2f}x"


def points_table(points: Sequence[Point], level_name: str = "concurrency") -> str:
    header = ["series", "kind", level_name, "texts/s", "p50 ms", "p99 ms", "errors/requests"]
    rows = [[p.series, p.kind, str(p.level), fmt(p.throughput), fmt(p.p50_ms, 2), fmt(p.p99_ms, 2),
             f"{p.errors}/{p.requests}"] for p in points]
    return markdown_table(header, rows)


@dataclass(frozen=True)
class Series:
    """What one benchmark measured: closed-loop points (by concurrency or batch size) and open-loop points (by
    offered requests/s)."""

    closed: list[Point]
    opened: list[Point]

    def __add__(self, other: Series) -> Series:
        return Series(self.closed + other.closed, self.opened + other.opened)


def series_json(series: Series) -> dict[str, list[dict[str, Any]]]:
    return {"closed_loop": points_json(series.closed), "open_loop": points_json(series.opened)}


def progress(p: Point, level_name: str = "N") -> None:
    """One line per measured level on stderr, so a long run shows where it is."""
    line = (f"  {p.series:>18} {p.kind:>5} {level_name}={p.level:<4} {p.throughput:10.1f} texts/s  "
            f"p50 {p.p50_ms:9.2f} ms  p99 {p.p99_ms:9.2f} ms  errors {p.errors}/{p.requests}")
    sys.stderr.write(line + (f"  first error: {p.first_error}" if p.first_error else "") + "\n")


def find(points: Sequence[Point], series: str, level: int, kind: str = "all") -> Point | None:
    return next((p for p in points if p.series == series and p.level == level and p.kind == kind), None)


def points_json(points: Sequence[Point]) -> list[dict[str, Any]]:
    return [asdict(p) for p in points]


def plot(points: Sequence[Point], path: Path, *, title: str, latency_kinds: Sequence[str] = ("all",),
         xlabel: str = "concurrency (clients in a closed loop)", latency_title: str = "latency vs concurrency",
         log_x: bool = True) -> None:
    """Throughput vs level, then one panel per request kind of p50 (solid) and p99 (dashed) latency vs level;
    one colour per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(latency_kinds), figsize=(5.5 * (1 + len(latency_kinds)), 4.5))
    throughput_ax, latency_axes = axes[0], axes[1:]
    for index, name in enumerate(dict.fromkeys(p.series for p in points)):
        def line(kind: str, series: str = name) -> list[Point]:
            return sorted((p for p in points if p.series == series and p.kind == kind), key=lambda p: p.level)

        color = f"C{index}"
        total = line("all")
        throughput_ax.plot([p.level for p in total], [p.throughput for p in total], marker="o", color=color,
                           label=name)
        for ax, kind in zip(latency_axes, latency_kinds, strict=True):
            levels = [p.level for p in line(kind)]
            ax.plot(levels, [p.p50_ms for p in line(kind)], marker="o", color=color, label=f"{name} p50")
            ax.plot(levels, [p.p99_ms for p in line(kind)], marker="s", color=color, linestyle="--",
                    label=f"{name} p99")
    throughput_ax.set_title("throughput")
    throughput_ax.set_ylabel("texts per second")
    for ax, kind in zip(latency_axes, latency_kinds, strict=True):
        ax.set_title(latency_title + ("" if kind == "all" else f": {kind} requests"))
        ax.set_ylabel("latency (ms), log scale")
        ax.set_yscale("log")
    for ax in axes:
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_offered_load(points: Sequence[Point], path: Path, *, title: str,
                      latency_kinds: Sequence[str] = ("all",)) -> None:
    """Open-loop points: achieved throughput and p50/p99 latency against the offered requests/s."""
    plot(points, path, title=f"{title}: open loop, Poisson arrivals", latency_kinds=latency_kinds,
         xlabel="offered load (requests/s)", latency_title="latency vs offered load", log_x=False)


def open_loop_section(points: Sequence[Point], a: Any, image: str | None, level_name: str = "offered req/s") -> str:
    """The open-loop table: each series at fractions of the throughput its closed loop reached."""
    if not points:
        return ""
    fractions = ", ".join(f"{f:g}" for f in a.load_fractions)
    return "\n".join([
        "## Latency against offered load (open loop)", "",
        f"Requests arrive as a Poisson process at {fractions} times the best throughput each series reached in its "
        "closed loop, whatever the answers do; latency counts from each request's scheduled arrival, so a server "
        f"that falls behind shows it. {a.repeats} windows of {a.seconds:g} s per rate; medians.", "",
        points_table(points, level_name), f"![latency vs offered load]({image})" if image else "", ""])
