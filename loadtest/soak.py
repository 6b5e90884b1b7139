"""Soak: mixed locust load against one `seqserve serve` process for a bounded time, sampling its RSS and open
file descriptors. Exits 1 on any failed request, RSS growth beyond --rss-growth-mb or fd growth beyond --fd-growth.

    .venv/bin/python loadtest/soak.py --repo model_repository --seconds 300 --users 12
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.server import ServiceProcess  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    p.add_argument("--seconds", type=int, default=300)
    p.add_argument("--users", type=int, default=12)
    p.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results" / "soak")
    p.add_argument("--rss-growth-mb", type=float, default=100.0)
    p.add_argument("--fd-growth", type=int, default=20)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    samples: list[tuple[float, float, int]] = []
    with ServiceProcess(a.repo, a.out / "server.log") as service:
        assert service.proc is not None
        pid, stop = service.proc.pid, threading.Event()

        def sample() -> None:
            start = time.monotonic()
            while not stop.wait(5.0):
                samples.append((time.monotonic() - start, rss_mb(pid), open_fds(pid)))

        samples.append((0.0, rss_mb(pid), open_fds(pid)))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        locust = subprocess.run(
            [str(Path(sys.executable).parent / "locust"), "-f", "loadtest/locustfile.py", "--headless",
             "--host", service.url, "-u", str(a.users), "-r", str(a.users), "-t", f"{a.seconds}s",
             "--json-file", str(a.out / "stats"), "--csv", str(a.out / "stats"), "--only-summary"],
            cwd=ROOT, capture_output=True, text=True, timeout=a.seconds + 120)
        stop.set()
        sampler.join()
        time.sleep(2)
        samples.append((samples[-1][0] + 2, rss_mb(pid), open_fds(pid)))
    stats = json.loads((a.out / "stats.json").read_text())
    requests = sum(s["num_requests"] for s in stats)
    failures = sum(s["num_failures"] for s in stats)
    warm = samples[min(len(samples) - 1, 6)]  # after about 30 s: past warm-up allocations
    rss_growth, fd_growth = samples[-1][1] - warm[1], samples[-1][2] - samples[0][2]
    summary = {"seconds": a.seconds, "users": a.users, "requests": requests, "failures": failures,
               "rss_mb_start": round(samples[0][1], 1), "rss_mb_after_warmup": round(warm[1], 1),
               "rss_mb_max": round(max(s[1] for s in samples), 1), "rss_mb_end": round(samples[-1][1], 1),
               "fds_start": samples[0][2], "fds_end": samples[-1][2], "fds_max": max(s[2] for s in samples),
               "locust_exit": locust.returncode}
    (a.out / "soak.json").write_text(json.dumps({"summary": summary, "samples": samples}, indent=1))
    print(json.dumps(summary))  # noqa: T201
    ok = failures == 0 and locust.returncode == 0 and rss_growth <= a.rss_growth_mb and fd_growth <= a.fd_growth
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
