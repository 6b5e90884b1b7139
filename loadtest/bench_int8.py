"""Texts/s of a float model version against its int8 variants, side by side in one run (no HTTP, one onnxruntime
thread, rounds interleaved, medians), on the first version's held-out texts.

    .venv/bin/python loadtest/bench_int8.py runs/en-de-float/1 model_repository/en-de/2 [more int8 versions]
    .venv/bin/python loadtest/bench_int8.py model_repository/sentiment/1 runs/sentiment-int8/1 --texts 512
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.engine.kinds import load_runtime  # noqa: E402
from service.engine.repository import read_config, resolve_version_dir  # noqa: E402
from service.engine.sessions import SessionOptions  # noqa: E402
from service.engine.translator import DecodeOptions  # noqa: E402
from training.evaluate import load_eval_data  # noqa: E402
from training.kinds import TOOLS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+", type=Path, help="the float version first, then int8 versions")
    parser.add_argument("--texts", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    dirs = [resolve_version_dir(d) for d in args.versions]
    config = read_config(dirs[0])
    examples = load_eval_data(config, SimpleNamespace(data=None, split="test"))  # Multi30k's test is test2016
    texts = [TOOLS[config["kind"]].input_text(e) for e in examples][: args.texts]
    runtimes = [load_runtime(d, read_config(d), SessionOptions(intra_op_threads=1)) for d in dirs]
    if config["kind"] == "translator":
        setups = [("beam 5, batches of 32", 32, 5), ("greedy, one text at a time", 1, 1)]
    else:
        setups = [("batches of 32", 32, 0), ("one text at a time", 1, 0)]
    print(f"| {config['kind']} | " + " | ".join(str(d) for d in dirs) + " |")  # noqa: T201
    print("|---|" + "---:|" * len(dirs))  # noqa: T201
    for label, batch, beam in setups:
        count = len(texts) if batch > 1 else len(texts) // 3
        rates: list[list[float]] = [[] for _ in dirs]
        for _ in range(args.rounds):
            for rates_of, runtime in zip(rates, runtimes, strict=True):
                start = time.perf_counter()
                for i in range(0, count, batch):
                    chunk = texts[i:i + batch]
                    if beam:
                        runtime.translate(chunk, DecodeOptions(beam_size=beam))  # type: ignore[attr-defined]
                    else:
                        runtime.predict(chunk)  # type: ignore[attr-defined]
                rates_of.append(count / (time.perf_counter() - start))
        medians = [statistics.median(r) for r in rates]
        cells = [f"{m:.1f} texts/s" if i == 0 else f"{m:.1f} ({m / medians[0]:.2f}x)" for i, m in enumerate(medians)]
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)  # noqa: T201


if __name__ == "__main__":
    main()
