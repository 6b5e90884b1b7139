"""Benchmark output: the machine, markdown tables, ratios and plots (matplotlib imported only to plot)."""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from service.bench.core import Point

LIBRARIES = ("onnxruntime", "numpy", "tokenizers", "fastapi", "uvicorn", "pydantic", "httpx")


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


def progress(p: Point) -> None:
    """One line per measured level on stderr, so a long run shows where it is."""
    line = (f"  {p.series:>18} {p.kind:>5} N={p.level:<4} {p.throughput:10.1f} texts/s  p50 {p.p50_ms:9.2f} ms  "
            f"p99 {p.p99_ms:9.2f} ms  errors {p.errors}/{p.requests}")
    sys.stderr.write(line + (f"  first error: {p.first_error}" if p.first_error else "") + "\n")


def find(points: Sequence[Point], series: str, level: int, kind: str = "all") -> Point | None:
    return next((p for p in points if p.series == series and p.level == level and p.kind == kind), None)


def points_json(points: Sequence[Point]) -> list[dict[str, Any]]:
    return [asdict(p) for p in points]


def plot(points: Sequence[Point], path: Path, *, title: str, throughput_kinds: Sequence[str] = ("all",),
         latency_kinds: Sequence[str] = ("all",), xlabel: str = "concurrency (clients in a closed loop)") -> None:
    """Two panels, one colour per series: throughput vs level, and p50 (solid) / p99 (dashed) latency vs level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, name in enumerate(dict.fromkeys(p.series for p in points)):
        for ax, kinds in ((left, throughput_kinds), (right, latency_kinds)):
            for marker, kind in zip("osd^", kinds, strict=False):
                line = sorted((p for p in points if p.series == name and p.kind == kind), key=lambda p: p.level)
                label = name if kind == "all" else f"{name} ({kind})"
                levels = [p.level for p in line]
                if ax is left:
                    ax.plot(levels, [p.throughput for p in line], marker=marker, color=f"C{index}", label=label)
                    continue
                ax.plot(levels, [p.p50_ms for p in line], marker=marker, color=f"C{index}", label=f"{label} p50")
                ax.plot(levels, [p.p99_ms for p in line], marker=marker, color=f"C{index}", linestyle="--",
                        label=f"{label} p99")
    for ax, ylabel in ((left, "texts per second"), (right, "latency (ms), log scale")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    right.set_yscale("log")
    left.set_title("throughput")
    right.set_title("latency vs offered load")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
