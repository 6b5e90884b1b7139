"""A `seqserve serve` child process on loopback for one benchmark series; always stopped by its PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from service.errors import UserError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, log_hint: str = "") -> None:
    """Until `url` answers /v2/health/ready with 200; fails early if `proc` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise UserError(f"the service exited with {proc.returncode} before it was ready{log_hint}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise UserError(f"{url} was not ready within {timeout:.0f}s{log_hint}")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 60.0) -> int:
    """SIGTERM by PID, then SIGKILL if it has not exited within `grace` seconds; -> its exit code."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return int(proc.returncode)


class ServiceProcess:
    """Serves `repo` with `settings` given as `seqserve serve` flags (e.g. scheduler="static"); logs to `log_path`."""

    def __init__(self, repo: Path, log_path: Path, ready_timeout: float = 120.0, *, source: Path | None = None,
                 env: dict[str, str] | None = None, **settings: str) -> None:
        """`source`: a source tree to run the service from instead of this one (an A/B against another commit);
        `env`: variables added to this process's environment. The response cache is off unless a setting turns it
        on: benchmarks send the same texts again and again, and measure computing them (loadtest/bench_cache.py
        measures the cache)."""
        self.repo, self.log_path, self.ready_timeout = repo, log_path, ready_timeout
        self.source, self.env = source, {"SEQSERVE_RESPONSE_CACHE_ENTRIES": "0", **(env or {})}
        self.flags = [arg for name, value in settings.items() for arg in (f"--{name.replace('_', '-')}", value)]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "serve", "--model-repository", str(self.repo),
                 "--host", "127.0.0.1", "--port", str(self.port), *self.flags], stdout=log, stderr=subprocess.STDOUT,
                cwd=self.source, env={**os.environ, **self.env} if self.env else None)
        try:
            wait_ready(self.url, self.ready_timeout, self.proc, f"; see {self.log_path}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
