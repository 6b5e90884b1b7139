"""The response cache under a workload of repeated texts, side by side in one run: locust's translate users draw
their texts from the first `--distinct-texts` of the English test sentences, against the bundled translator with
the cache on and with it off (each server fresh, one after the other, the same locust run). Reports requests/s,
p50 and p99 from locust, and the hit rate from the service's own counters.

    .venv/bin/python loadtest/bench_cache.py --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.server import ServiceProcess  # noqa: E402


def counter(text: str, name: str, model: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def locust_run(url: str, folder: Path, args: argparse.Namespace) -> dict[str, float]:
    """One headless locust run of the translate users; the aggregated row of its stats CSV."""
    prefix = folder / "locust"
    subprocess.run([str(Path(sys.executable).parent / "locust"), "-f", str(ROOT / "loadtest" / "locustfile.py"),
                    "--headless", "--host", url, "-u", str(args.users), "-r", str(args.users), "-t", f"{args.seconds}s",
                    "--csv", str(prefix), "--distinct-texts", str(args.distinct_texts), "--think-time", "0",
                    "--translator-model", args.model, "--beam-size", str(args.beam_size), "--only-summary",
                    "TranslateUser"], check=True, cwd=ROOT, capture_output=True, timeout=args.seconds + 120)
    with open(f"{prefix}_stats.csv", encoding="utf-8") as fh:
        row = next(r for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    return {"requests": float(row["Request Count"]), "failures": float(row["Failure Count"]),
            "requests_per_s": float(row["Requests/s"]), "p50_ms": float(row["50%"]), "p99_ms": float(row["99%"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--model", default="en-de")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--distinct-texts", type=int, default=200)
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--out", type=Path, help="folder for cache.md and cache.json")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, entries in (("cache on", "10000"), ("cache off", "0")):
            folder = Path(tmp) / name.replace(" ", "-")
            folder.mkdir()
            with ServiceProcess(args.repo, folder / "server.log", models=args.model,
                                response_cache_entries=entries) as server:
                figures = locust_run(server.url, folder, args)
                scrape = httpx.get(f"{server.url}/metrics", timeout=10).text
            hits = counter(scrape, "seqserve_cache_hits_total", args.model)
            misses = counter(scrape, "seqserve_cache_misses_total", args.model)
            figures["hit_rate"] = hits / (hits + misses) if hits + misses else 0.0
            results[name] = figures
            print(name, json.dumps({k: round(v, 3) for k, v in figures.items()}), flush=True)  # noqa: T201
    on, off = results["cache on"], results["cache off"]
    ratios = {"requests_per_s": on["requests_per_s"] / off["requests_per_s"], "p50": on["p50_ms"] / off["p50_ms"],
              "p99": on["p99_ms"] / off["p99_ms"]}
    print("on / off:", json.dumps({k: round(v, 3) for k, v in ratios.items()}))  # noqa: T201
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        setup = {k: getattr(args, k) for k in ("model", "users", "seconds", "distinct_texts", "beam_size")}
        (args.out / "cache.json").write_text(json.dumps({"setup": setup, "results": results, "ratios": ratios},
                                                        indent=2) + "\n")
        lines = ["# Response cache: repeated texts", "",
                 f"`python loadtest/bench_cache.py`: locust, {args.users} translate users without think time for "
                 f"{args.seconds} s, texts drawn from {args.distinct_texts} distinct English test sentences, "
                 f"{args.model} beam {args.beam_size}; a fresh server each run.", "",
                 "| cache | requests | requests/s | p50 ms | p99 ms | hit rate |", "|---|---|---|---|---|---|"]
        for name, f in results.items():
            lines.append(f"| {name} | {f['requests']:.0f} | {f['requests_per_s']:.1f} | {f['p50_ms']:.0f} | "
                         f"{f['p99_ms']:.0f} | {f['hit_rate']:.1%} |")
        lines += ["", f"On / off: requests/s {ratios['requests_per_s']:.2f}x, p50 {ratios['p50']:.2f}x, "
                  f"p99 {ratios['p99']:.2f}x."]
        (args.out / "cache.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
