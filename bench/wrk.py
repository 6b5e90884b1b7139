"""A closed loop driven by wrk, a load generator written in C, for the classification series.

On these 2 cores the generator shares the CPU with the service it measures. The aiohttp loop costs about
0.2 ms of CPU per request, which at 3,000 requests/s is a third of a core taken from the service; wrk costs
about a tenth of that. wrk cannot check what each answer says, only its status, so a sample of the calls
is checked over HTTP before each series (`spot_check`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.core import Call, Check, KindStats, Window
from service.errors import UserError

# Rotates through the bodies (one JSON document per line of $SEQSERVE_WRK_BODIES); each connection keeps one
# request in flight. Statuses other than 2xx are counted per thread and the first such answer is kept; done()
# writes one JSON summary to $SEQSERVE_WRK_OUT (latencies in microseconds).
SCRIPT = r"""
local threads = {}

function setup(thread)
  thread:set("start", #threads * 7919)
  table.insert(threads, thread)
end

function init(args)
  bodies, refused, first = {}, 0, ""
  local file = assert(io.open(os.getenv("SEQSERVE_WRK_BODIES"), "r"))
  local headers = {["Content-Type"] = "application/json"}
  for line in file:lines() do
    if #line > 0 then table.insert(bodies, wrk.format("POST", nil, headers, line)) end
  end
  file:close()
  position = start % #bodies
end

function request()
  position = position % #bodies + 1
  return bodies[position]
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    refused = refused + 1
    if first == "" then first = "HTTP " .. status .. ": " .. string.sub(body or "", 1, 200) end
  end
end

function done(summary, latency, requests)
  local refused, first = 0, ""
  for _, thread in ipairs(threads) do
    refused = refused + thread:get("refused")
    if first == "" then first = thread:get("first") end
  end
  local e = summary.errors
  local out = assert(io.open(os.getenv("SEQSERVE_WRK_OUT"), "w"))
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "refused": %d, "socket_errors": %d, "p50_us": %d, "p99_us": %d, '
      .. '"first_error": "%s"}',
    summary.requests, summary.duration, refused, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), (first:gsub('[%c"\\]', " "))))
  out:close()
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def wrk_closed_loop(url: str, calls: Sequence[Call], concurrency: int, seconds: float, *,
                    warmup: float = 1.0, timeout: float = 60.0) -> Window:
    """`concurrency` connections with one request each in flight for `seconds`, after an unmeasured warm-up run.

    Every call must carry the same number of texts (throughput is answered requests times that). A request
    counts as an error when it gets a non-2xx status or a socket error; wrk's `--timeout` turns slow answers
    into latency rather than errors, as the aiohttp loop does."""
    if concurrency < 1 or seconds <= 0 or warmup < 0:
        raise ValueError("wrk_closed_loop needs concurrency >= 1, seconds > 0 and warmup >= 0")
    if not calls or len({c.texts for c in calls}) != 1 or any(b"\n" in c.body for c in calls):
        raise ValueError("wrk_closed_loop needs calls with one line of JSON each and the same number of texts")
    if not available():
        raise UserError("wrk is not installed (apt-get install wrk), or use --generator aiohttp")
    with tempfile.TemporaryDirectory(prefix="seqserve-wrk-") as tmp:
        folder = Path(tmp)
        (folder / "load.lua").write_text(SCRIPT, encoding="utf-8")
        (folder / "bodies.jsonl").write_bytes(b"\n".join(c.body for c in calls) + b"\n")
        if warmup > 0:
            _run(folder, url, concurrency, warmup, timeout)
        summary = _run(folder, url, concurrency, seconds, timeout)
    stats = KindStats(requests=summary.requests + summary.socket_errors,
                      texts=max(0, summary.requests - summary.refused) * calls[0].texts,
                      errors=summary.refused + summary.socket_errors,
                      quantiles={50: summary.p50_us / 1e6, 99: summary.p99_us / 1e6})
    return Window(concurrency, summary.duration_us / 1e6, {calls[0].kind: stats}, summary.first_error or None)


@dataclass(frozen=True)
class Summary:
    """What the script's done() wrote for one wrk run."""

    requests: int  # completed, whatever their status
    duration_us: int
    refused: int  # non-2xx answers
    socket_errors: int  # connect, read, write errors and timeouts
    p50_us: int
    p99_us: int
    first_error: str


def _run(folder: Path, url: str, concurrency: int, seconds: float, timeout: float) -> Summary:
    out = folder / "summary.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "SEQSERVE_WRK_BODIES": str(folder / "bodies.jsonl"), "SEQSERVE_WRK_OUT": str(out)}
    command = [shutil.which("wrk") or "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
               f"--timeout={round(timeout)}s", "-s", str(folder / "load.lua"), url]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                          timeout=seconds + timeout + 30)
    if done.returncode != 0 or not out.is_file():
        raise UserError(f"wrk failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[:300]}")
    return Summary(**json.loads(out.read_text(encoding="utf-8")))


def spot_check(url: str, calls: Sequence[Call], check: Check, count: int = 32) -> None:
    """Sends `count` of the calls (spread over the list) one by one and checks each answer: wrk will not."""
    step = max(1, len(calls) // count)
    with httpx.Client(timeout=60) as client:
        for call in list(calls)[::step][:count]:
            try:
                response = client.post(url, content=call.body, headers={"content-type": "application/json"})
            except httpx.HTTPError as exc:
                raise UserError(f"{url}: a spot-check request failed ({type(exc).__name__}: {exc})") from None
            problem = (f"HTTP {response.status_code}: {response.text[:200]}" if response.status_code != 200
                       else check(call, response.json()))
            if problem:
                raise UserError(f"{url}: a spot-checked answer is wrong: {problem}")
