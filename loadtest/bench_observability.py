"""What tracing and gRPC cost, side by side in one run: classification throughput at one concurrency under wrk
for the service at a baseline commit, this tree with tracing off, and this tree with tracing on (sampling 1 %, and
100 %, exporting OTLP/HTTP to a local sink); then tritonclient.grpc against tritonclient.http on the same texts.
Every server is up for the whole run and the series are measured in turn, round after round (medians).

    .venv/bin/python loadtest/bench_observability.py --baseline-rev 25b0aaa --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.classify import classify_calls, load_texts  # noqa: E402
from bench.server import ServiceProcess  # noqa: E402
from bench.wrk import wrk_closed_loop  # noqa: E402


class Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that accepts and counts what it is sent (a collector's cost is not ours)."""

    received = 0
    requests = 0

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        Sink.received += len(body)
        Sink.requests += 1
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def triton_loop(protocol: str, address: str, model: str, texts: list[str], concurrency: int,
                      seconds: float) -> dict[str, float]:
    """`concurrency` coroutines, each with one infer in flight, for `seconds`: requests/s and latency quantiles."""
    if protocol == "grpc":
        import tritonclient.grpc.aio as client_module
    else:
        import tritonclient.http.aio as client_module
    client = client_module.InferenceServerClient(address) if protocol == "grpc" else \
        client_module.InferenceServerClient(address, conn_limit=concurrency)
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        position = index * 7919
        while time.perf_counter() < stop:
            text = texts[position % len(texts)]
            position += 1
            tensor = client_module.InferInput("text", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
            start = time.perf_counter()
            result = await client.infer(model, [tensor])
            latencies.append(time.perf_counter() - start)
            assert result.as_numpy("label") is not None

    began = time.perf_counter()
    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        await client.close()
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies)
    return {"rps": len(latencies) / elapsed, "p50_ms": ordered[len(ordered) // 2] * 1000,
            "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--model", default="sentiment")
    parser.add_argument("--baseline-rev", help="a commit to measure beside this tree (a git worktree of it)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--out", type=Path, help="folder for observability.md and observability.json")
    a = parser.parse_args()
    repo = a.repo.resolve()
    texts, source = load_texts(None, a.texts, 0)
    calls = classify_calls(texts, a.model)
    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
    common = {"models": a.model}
    with tempfile.TemporaryDirectory(prefix="seqserve-obs-") as tmp:
        folder = Path(tmp)
        variants: dict[str, dict[str, Any]] = {}
        if a.baseline_rev:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder / "baseline"),
                            a.baseline_rev], check=True, capture_output=True)
            variants[f"baseline {a.baseline_rev}"] = {"source": folder / "baseline"}
        variants["tracing off"] = {}
        variants["tracing on, 1 %"] = {"env": {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                                               "SEQSERVE_TRACE_SAMPLE_RATIO": "0.01"}}
        variants["tracing on, 100 %"] = {"env": {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                                                 "SEQSERVE_TRACE_SAMPLE_RATIO": "1"}}
        servers = {name: ServiceProcess(repo, folder / f"{i}.log", **v, **common)
                   for i, (name, v) in enumerate(variants.items())}
        grpc_server = ServiceProcess(repo, folder / "grpc.log", grpc_port="0", **common)
        started: list[ServiceProcess] = []
        try:
            for server in [*servers.values(), grpc_server]:
                started.append(server.__enter__())
            wrk: dict[str, list[float]] = {name: [] for name in servers}
            p99: dict[str, list[float]] = {name: [] for name in servers}
            for round_number in range(a.rounds):
                for name, server in servers.items():
                    window = wrk_closed_loop(f"{server.url}/v1/classify", calls, a.concurrency, a.seconds,
                                             warmup=a.warmup)
                    stats = window.kinds[calls[0].kind]
                    assert stats.errors == 0, window.first_error
                    wrk[name].append(stats.texts / window.seconds)
                    p99[name].append(stats.quantiles[99] * 1000)
                    print(f"round {round_number + 1} {name}: {wrk[name][-1]:,.0f} requests/s", flush=True)  # noqa: T201
            grpc_port = _grpc_port(folder / "grpc.log")
            protocols: dict[str, list[dict[str, float]]] = {"http": [], "grpc": []}
            for _ in range(a.rounds):
                for protocol in ("http", "grpc"):
                    address = f"127.0.0.1:{grpc_port}" if protocol == "grpc" else grpc_server.url.removeprefix(
                        "http://")
                    asyncio.run(triton_loop(protocol, address, a.model, texts, a.concurrency, a.warmup))
                    protocols[protocol].append(asyncio.run(triton_loop(protocol, address, a.model, texts,
                                                                       a.concurrency, a.seconds)))
                    print(f"tritonclient.{protocol}: {protocols[protocol][-1]['rps']:,.0f} requests/s", flush=True)  # noqa: T201
        finally:
            for server in started:
                server.stop()
            if a.baseline_rev:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder / "baseline")],
                               check=False, capture_output=True)
    sink.shutdown()
    report(a, source, wrk, p99, protocols)


def _grpc_port(log: Path) -> int:
    for line in log.read_text().splitlines():
        if "OIP v2 over gRPC on" in line:
            return int(line.rsplit(":", 1)[1])
    raise SystemExit(f"the gRPC server did not say its port; see {log}")


def report(a: argparse.Namespace, source: str, wrk: dict[str, list[float]], p99: dict[str, list[float]],
           protocols: dict[str, list[dict[str, float]]]) -> None:
    median = {name: statistics.median(v) for name, v in wrk.items()}
    reference = median.get(f"baseline {a.baseline_rev}", median["tracing off"])
    lines = [f"# Tracing and gRPC: what they cost ({a.model}, c = {a.concurrency})", "",
             f"`loadtest/bench_observability.py --baseline-rev {a.baseline_rev}`: {a.rounds} rounds of "
             f"{a.seconds:g} s windows (after {a.warmup:g} s warm-up), series in turn, medians; {source}; "
             "2 shared cores (noisy: read the ratios).", "",
             "| series (wrk, REST /v1/classify) | requests/s (median) | each round | p99 ms | vs baseline | "
             "vs baseline, same round (median) |",
             "|---|---:|---|---:|---:|---:|"]
    base = wrk.get(f"baseline {a.baseline_rev}", wrk["tracing off"])
    for name, values in wrk.items():
        paired = statistics.median(v / b for v, b in zip(values, base, strict=True))  # the rounds drift
        lines.append(f"| {name} | {median[name]:,.0f} | {', '.join(f'{v:,.0f}' for v in values)} | "
                     f"{statistics.median(p99[name]):.1f} | {median[name] / reference:.3f} | {paired:.3f} |")
    lines += ["", "| client, same texts, one text a request | requests/s (median) | p50 ms | p99 ms |",
              "|---|---:|---:|---:|"]
    for protocol, runs in protocols.items():
        lines.append(f"| tritonclient.{protocol} (aio, {a.concurrency} in flight) | "
                     f"{statistics.median(r['rps'] for r in runs):,.0f} | "
                     f"{statistics.median(r['p50_ms'] for r in runs):.1f} | "
                     f"{statistics.median(r['p99_ms'] for r in runs):.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)  # noqa: T201
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "observability.md").write_text(text)
        (a.out / "observability.json").write_text(json.dumps({"wrk": wrk, "p99_ms": p99, "protocols": protocols,
                                                              "concurrency": a.concurrency}, indent=1) + "\n")


if __name__ == "__main__":
    main()
