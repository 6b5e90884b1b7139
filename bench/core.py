"""Closed- and open-loop load generation over HTTP (and over a plain function) and the statistics it measured."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from service.errors import UserError


@dataclass(frozen=True)
class Call:
    """One request: its JSON body (encoded once, up front), a kind to group latencies by, the texts it carries."""

    kind: str
    body: bytes
    texts: int


CallSource = Callable[[int, int], Call]  # (worker index, that worker's request number) -> the next call
Check = Callable[[Call, Any], "str | None"]  # (call, JSON of its 200 answer) -> None, or what is wrong with it


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating linearly between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


@dataclass
class KindStats:
    """What one kind of request did within one measurement window."""

    requests: int = 0
    texts: int = 0  # texts answered correctly
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    quantiles: dict[int, float] = field(default_factory=dict)  # {50: s, 99: s} when a generator gave only these


@dataclass
class Window:
    """One measurement: a load level held for `seconds`, after a warm-up that is not counted."""

    level: int  # concurrency (closed loop), offered requests/s (open loop) or batch size (bare)
    seconds: float
    kinds: dict[str, KindStats]
    first_error: str | None = None

    def record(self, kind: str, texts: int, latency: float, error: str | None) -> None:
        stats = self.kinds.setdefault(kind, KindStats())
        stats.requests += 1
        if error is None:
            stats.texts += texts
            stats.latencies.append(latency)
        else:
            stats.errors += 1
            self.first_error = self.first_error or error

    def select(self, kind: str | None) -> list[KindStats]:
        return list(self.kinds.values()) if kind is None else [self.kinds.get(kind, KindStats())]


@dataclass(frozen=True)
class Point:
    """Medians over the repeats of one level: what tables and plots show."""

    series: str  # e.g. "service fp32", "bare int8", "continuous"
    kind: str  # "all", or a request kind such as "short"
    level: int
    throughput: float  # texts per second
    p50_ms: float
    p99_ms: float
    errors: int  # summed over the repeats
    requests: int  # summed over the repeats
    repeats: int
    first_error: str | None = None


def summarize(series: str, windows: Sequence[Window], kind: str | None = None) -> Point:
    """Median throughput, p50 and p99 over repeated windows of one level (each statistic's own median)."""
    if not windows:
        raise ValueError("summarize needs at least one window")
    throughputs, p50s, p99s, errors, requests = [], [], [], 0, 0
    for w in windows:
        stats = w.select(kind)
        latencies = [x for s in stats for x in s.latencies]
        throughputs.append(sum(s.texts for s in stats) / w.seconds)
        if latencies:
            p50s.append(percentile(latencies, 50) * 1e3)
            p99s.append(percentile(latencies, 99) * 1e3)
        elif len(stats) == 1 and stats[0].quantiles:  # percentiles cannot be merged: only one kind's are used
            p50s.append(stats[0].quantiles[50] * 1e3)
            p99s.append(stats[0].quantiles[99] * 1e3)
        errors += sum(s.errors for s in stats)
        requests += sum(s.requests for s in stats)
    return Point(series, kind or "all", windows[0].level, statistics.median(throughputs),
                 statistics.median(p50s) if p50s else math.nan, statistics.median(p99s) if p99s else math.nan,
                 errors, requests, len(windows), next((w.first_error for w in windows if w.first_error), None))


async def _send(session: aiohttp.ClientSession, url: str, call: Call, check: Check | None) -> str | None:
    try:
        async with session.post(url, data=call.body, headers={"content-type": "application/json"}) as response:
            status, payload = response.status, await response.read()
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if status != 200:
        return f"HTTP {status}: {payload[:200].decode('utf-8', 'replace')}"
    if check is None:
        return None
    try:
        body = json.loads(payload)
    except ValueError:
        return "the answer is not JSON"
    return check(call, body)


async def closed_loop(url: str, source: CallSource, concurrency: int, seconds: float, *, warmup: float = 1.0,
                      timeout: float = 300.0, check: Check | None = None) -> Window:
    """`concurrency` workers, each with one request in flight; answers that arrive within the window count.

    Counting completions (not starts) inside [warm-up end, end] keeps the throughput unbiased when a request
    takes a sizeable part of the window. Requests still in flight at the end are awaited but not counted.
    aiohttp rather than httpx: on this 2-core machine httpx.AsyncClient spent 6 ms of CPU per request at 32
    connections (aiohttp 0.2 ms), and the generator shares the cores with the service it measures.
    """
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        return await closed_workers(lambda call: _send(session, url, call, check), source, concurrency, seconds,
                                    warmup)


async def closed_workers(send: Callable[[Call], Awaitable[str | None]], source: CallSource, concurrency: int,
                         seconds: float, warmup: float) -> Window:
    """`concurrency` workers, each awaiting `send(call)` (None, or the error) before its next call; what finishes
    inside the window after `warmup` counts. The closed loop over HTTP, and the bare engine's (bench/engine_loop.py)."""
    if concurrency < 1 or seconds <= 0 or warmup < 0:
        raise ValueError("closed_loop needs concurrency >= 1, seconds > 0 and warmup >= 0")
    window = Window(concurrency, seconds, {})
    begin = time.perf_counter() + warmup
    end = begin + seconds

    async def worker(index: int) -> None:
        n = 0
        while (t0 := time.perf_counter()) < end:
            call = source(index, n)
            n += 1
            error = await send(call)
            t1 = time.perf_counter()
            if begin <= t1 <= end:
                window.record(call.kind, call.texts, t1 - t0, error)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return window


def run_closed_loop(url: str, source: CallSource, concurrency: int, seconds: float, *, warmup: float = 1.0,
                    check: Check | None = None) -> Window:
    return asyncio.run(closed_loop(url, source, concurrency, seconds, warmup=warmup, check=check))


def arrivals(rate: float, horizon: float, seed: int) -> list[float]:
    """Poisson arrival times (seconds from the start) before `horizon`: the same for the same seed, however fast
    the machine, so an open loop's request count in its window is known in advance."""
    rng = random.Random(seed)
    times: list[float] = []
    at = 0.0
    while at < horizon:
        times.append(at)
        at += rng.expovariate(rate)
    return times


async def open_loop(url: str, source: CallSource, rate: float, seconds: float, *, warmup: float = 1.0,
                    timeout: float = 300.0, check: Check | None = None, max_in_flight: int = 2048,
                    seed: int = 0) -> Window:
    """Requests start at Poisson arrivals, `rate` a second, whatever the answers do: the load of many independent
    clients. Latency runs from each request's scheduled start, so a server that falls behind shows it (a closed
    loop would wait for it, and slow down its own arrivals: coordinated omission).

    The requests scheduled inside the window are measured, however late they finish; throughput is their
    answered texts over the time from the window's start to the later of its end and their last answer.
    """
    if rate <= 0 or seconds <= 0 or warmup < 0:
        raise ValueError("open_loop needs rate > 0, seconds > 0 and warmup >= 0")
    window = Window(round(rate), seconds, {})
    in_flight: set[asyncio.Task[None]] = set()
    last_answer = 0.0
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        origin = time.perf_counter()
        begin, end = origin + warmup, origin + warmup + seconds

        async def one(call: Call, scheduled: float) -> None:
            nonlocal last_answer
            error = await _send(session, url, call, check)
            done = time.perf_counter()
            if begin <= scheduled < end:
                window.record(call.kind, call.texts, done - scheduled, error)
                last_answer = max(last_answer, done)

        for n, offset in enumerate(arrivals(rate, warmup + seconds, seed)):
            at = origin + offset
            if (wait := at - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            call = source(0, n)
            if len(in_flight) >= max_in_flight:  # the server is this far behind: count the request as refused
                if begin <= at < end:
                    window.record(call.kind, call.texts, 0.0, f"more than {max_in_flight} requests in flight")
            else:
                task = asyncio.create_task(one(call, at))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
    window.seconds = max(seconds, last_answer - begin)
    return window


def run_open_loop(url: str, source: CallSource, rate: float, seconds: float, *, warmup: float = 1.0,
                  check: Check | None = None, seed: int = 0) -> Window:
    return asyncio.run(open_loop(url, source, rate, seconds, warmup=warmup, check=check, seed=seed))


def open_loop_points(series: str, url: str, source: CallSource, capacity: float, fractions: Sequence[float], *,
                     seconds: float, warmup: float, repeats: int, check: Check | None,
                     kinds: Sequence[str] = ()) -> list[Point]:
    """Latency against offered load: an open loop at each fraction of `capacity` (requests/s, e.g. the best a
    closed loop reached); one point per rate, plus one per request kind in `kinds`."""
    points = []
    for fraction in fractions:
        windows = [run_open_loop(url, source, fraction * capacity, seconds, warmup=warmup, check=check, seed=r)
                   for r in range(repeats)]
        points.append(summarize(series, windows))
        points += [summarize(series, windows, kind) for kind in kinds]
    return points


def batches(texts: Sequence[str], size: int) -> list[list[str]]:
    """Batches of `size` texts, wrapping around the list so that every batch is full."""
    if not texts or size < 1:
        raise ValueError("batches needs texts and a size >= 1")
    count = max(1, math.ceil(len(texts) / size))
    return [[texts[(b * size + i) % len(texts)] for i in range(size)] for b in range(count)]


def function_loop(predict: Callable[[list[str]], object], texts: Sequence[str], batch: int, seconds: float, *,
                  warmup: float = 1.0) -> Window:
    """The engine without HTTP: `predict` on batches of `batch` texts back to back, timed like `closed_loop`."""
    window = Window(batch, seconds, {})
    work = batches(texts, batch)
    begin = time.perf_counter() + warmup
    end = begin + seconds
    for n in itertools.count():
        chunk = work[n % len(work)]
        t0 = time.perf_counter()
        if t0 >= end:
            break
        predict(chunk)
        t1 = time.perf_counter()
        if begin <= t1 <= end:
            window.record("all", len(chunk), t1 - t0, None)
    return window


def read_texts(path: Path) -> list[str]:
    """The non-blank lines of a UTF-8 file, one text each."""
    try:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read texts ({exc})") from None
    if not texts:
        raise UserError(f"{path}: no texts (one per line)")
    return texts


def checked(point: Point) -> Point:
    """The point, unless every request failed: then the benchmark measured nothing and says why."""
    if point.requests and point.errors == point.requests:
        raise UserError(f"{point.series}: every request failed at level {point.level}; first: {point.first_error}")
    return point
