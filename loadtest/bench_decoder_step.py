"""Decoder-step latency of a translator's ONNX graphs at batch 1, 8, 32, 128 (no HTTP; medians of repeats).

Each step returns every row's 8 best candidates (what beam 4 asks for).

    .venv/bin/python loadtest/bench_decoder_step.py model_repository/en-de [--threads 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.engine.repository import read_config, resolve_version_dir  # noqa: E402
from service.engine.sessions import SessionOptions  # noqa: E402
from service.engine.text import BOS_ID  # noqa: E402
from service.engine.translator import TranslatorRuntime  # noqa: E402
from training.recipes import multi30k  # noqa: E402


def step_latency(runtime: TranslatorRuntime, texts: list[str], batch: int, repeats: int) -> float:
    """Median seconds of one decoder-step call for `batch` rows (sentences of typical length)."""
    seqs = runtime.encode((texts * (batch // len(texts) + 1))[:batch])
    width = max(map(len, seqs))
    ids = np.zeros((batch, width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    encoded = runtime.runner.encode(ids, np.array([len(s) for s in seqs]))
    tokens = np.full(batch, BOS_ID, dtype=np.int64)
    states = encoded.states
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step = runtime.runner.step(tokens, encoded.memory, encoded.keys, encoded.src_mask, states, k=8)
        times.append(time.perf_counter() - start)
        tokens, states = step.top_ids[:, 0], step.states
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    version = resolve_version_dir(args.model_dir)
    runtime = TranslatorRuntime(version, read_config(version), SessionOptions(intra_op_threads=args.threads))
    texts = [p.src for p in multi30k("en", "de", "test2016")][:128]
    rows = []
    for batch in (1, 8, 32, 128):
        seconds = step_latency(runtime, texts, batch, args.repeats)
        rows.append(f"| {batch} | {seconds * 1000:.2f} | {batch / seconds:,.0f} |")
    print(f"{version} ({runtime.provider})\n\n| batch | step ms (median) | rows/s |\n|---:|---:|---:|")  # noqa: T201
    print("\n".join(rows))  # noqa: T201


if __name__ == "__main__":
    main()
