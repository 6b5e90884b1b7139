"""Tagger encoder cells side by side: Elman, Jordan, LSTM and GRU trained with the same data, size and budget, each
evaluated through its ONNX graph (`python -m bench.cells --data atis`; `make compare-tagger-cells`).

Each cell is one `seqserve train tagger` process (`--jobs N` at a time; each trains on one thread, so give no more
than the cores). The table gives the test slot F1, intent and sentence accuracy, the best epoch and the training
tokens/s (median over epochs)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.report import machine_info, markdown_table

CELLS = ("rnn", "jordan", "lstm", "gru")
NAMES = {"rnn": "Elman (rnn)", "jordan": "Jordan", "lstm": "LSTM", "gru": "GRU"}


def train_cell(cell: str, data: str, out: Path, options: list[str]) -> Path:
    """Train one cell into out/<cell> (a fresh version 1); returns the version folder."""
    model_dir = out / "models" / f"tagger-{cell}"
    command = [str(Path(sys.executable).parent / "seqserve"), "train", "tagger", "--data", data, "--cell", cell,
               "--out", str(model_dir), "--version", "1", "--overwrite", "--work-dir", str(out / "runs" / cell),
               *options]
    print(" ".join(command), flush=True)  # noqa: T201 - progress on the console
    subprocess.run(command, check=True)
    return model_dir / "1"


def row(cell: str, version: Path) -> dict[str, Any]:
    test = json.loads((version / "metrics.json").read_text())["test"]
    training = json.loads((version / "config.json").read_text())["training"]
    rates = [e["tokens_per_s"] for e in training["history"]]
    return {"cell": NAMES[cell], "slot_f1": 100 * test["slot_f1"],
            "intent_accuracy": 100 * test["intent_accuracy"] if "intent_accuracy" in test else None,
            "sentence_accuracy": 100 * test["sentence_accuracy"], "best_epoch": training["best_epoch"],
            "epochs": len(training["history"]), "tokens_per_s": statistics.median(rates),
            "graph_mb": (version / "model.onnx").stat().st_size / 2**20}


def report(rows: list[dict[str, Any]], command: str) -> str:
    def pct(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    table = markdown_table(
        ["cell", "slot F1", "intent acc.", "sentence acc.", "best epoch / run", "train tokens/s", "graph MB"],
        [[r["cell"], pct(r["slot_f1"]), pct(r["intent_accuracy"]), pct(r["sentence_accuracy"]),
          f"{r['best_epoch']} / {r['epochs']}", f"{r['tokens_per_s']:.0f}", f"{r['graph_mb']:.1f}"] for r in rows])
    return "\n".join([f"Command: `{command}`", "", table, "", machine_info_line(), ""])


def machine_info_line() -> str:
    info = machine_info()
    return f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores; torch training on one thread."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="atis")
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--out", type=Path, default=Path("runs/cells"))
    p.add_argument("--jobs", type=int, default=1, help="cells trained at once")
    p.add_argument("--report", type=Path, default=Path("docs/benchmarks/tagger-cells.md"))
    p.add_argument("train_options", nargs=argparse.REMAINDER, help="after --: options for every `seqserve train`")
    a = p.parse_args(argv)
    options = [o for o in a.train_options if o != "--"]
    cells = [c.strip() for c in a.cells.split(",") if c.strip()]
    unknown = sorted(set(cells) - set(CELLS))
    if unknown:
        p.error(f"unknown cells {unknown}; choose from {', '.join(CELLS)}")
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        versions = list(pool.map(lambda cell: train_cell(cell, a.data, a.out, options), cells))
    rows = [row(cell, version) for cell, version in zip(cells, versions, strict=True)]
    text = report(rows, " ".join(["python -m bench.cells", *(argv if argv is not None else sys.argv[1:])]))
    a.report.parent.mkdir(parents=True, exist_ok=True)
    a.report.write_text(text, encoding="utf-8")
    print(text)  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
