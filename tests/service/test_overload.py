"""A burst at 10x measured capacity: the bounded queue rejects fast with 503 + Retry-After, accepted requests
finish correctly, memory stays bounded, and the service is back to normal afterwards.

Timing figures are printed (run with -s) for the notes; the assertions are on behaviour only."""
# Servers here run without the response cache: the faults and loads need every text computed, repeats included.

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx

from tests.fixtures import ProcessServer
from tests.service.api.test_api import NEGATIVE, POSITIVE, metric

TEXTS = [POSITIVE, NEGATIVE] * 16  # 32 texts a request, so a request is real work
RSS_BOUND_MB = 300


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code, self.headers, self.body = status, headers, body

    def json(self) -> dict:
        return json.loads(self.body)


async def timed_post(url: str) -> tuple[int, float, Reply]:
    """One request on its own connection with a minimal HTTP/1.1 client, so the load generator stays cheap."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": "reviews", "texts": TEXTS}).encode()
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    raw = await reader.read()
    elapsed = time.perf_counter() - start
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), elapsed, Reply(int(lines[0].split()[1]), headers, payload)


async def capacity(url: str, seconds: float = 2.0, concurrency: int = 8) -> float:
    """Requests/s a closed loop sustains."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            status, _, _ = await timed_post(url)
            done += status == 200

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return done / seconds


async def burst(url: str, count: int, seconds: float = 1.0) -> list[tuple[int, float, Reply]]:
    """Open loop: `count` arrivals spread evenly over `seconds`, whatever the answers."""
    tasks = []
    start = time.perf_counter()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i * seconds / count - time.perf_counter()))
        tasks.append(asyncio.create_task(timed_post(url)))
    return await asyncio.gather(*tasks)


def test_burst_at_ten_times_capacity(repo, tmp_path):
    server = ProcessServer(repo, tmp_path / "server.log", response_cache_entries="0", max_queue_size="256",
                           max_batch_size="64", retry_after_s="1")
    try:
        rss_before = rss_mb(server.proc.pid)
        rate = asyncio.run(capacity(server.url))
        unloaded = [asyncio.run(burst(server.url, 1))[0][1] for _ in range(5)]
        results = asyncio.run(burst(server.url, max(50, int(10 * rate))))
        rss_after = rss_mb(server.proc.pid)
        statuses = [s for s, _, _ in results]
        assert set(statuses) == {200, 503}, set(statuses)
        for status, _, response in results:
            if status == 503:
                assert response.headers["retry-after"] == "1" and "queue is full" in response.json()["error"]
            else:
                labels = [r["label"] for r in response.json()["results"]]
                assert labels == ["pos", "neg"] * 16
        assert rss_after - rss_before < RSS_BOUND_MB
        scrape = httpx.get(f"{server.url}/metrics").text
        assert metric(scrape, "seqserve_queue_depth", model="reviews") == 0
        assert metric(scrape, "seqserve_rejections_total", reason="queue_full") == statuses.count(503)
        served_503 = {le: metric(scrape, "seqserve_rejected_request_duration_seconds_bucket", model="reviews", le=le)
                      for le in ("0.001", "0.005", "0.025", "+Inf")}
        assert served_503["+Inf"] == statuses.count(503)
        after = [asyncio.run(burst(server.url, 1))[0] for _ in range(5)]  # back to normal service
        assert all(status == 200 for status, _, _ in after)
    finally:
        assert server.stop() == 0
    rejected = sorted(t for s, t, _ in results if s == 503)
    accepted = sorted(t for s, t, _ in results if s == 200)
    print(f"\ncapacity {rate:.1f} req/s (32 texts each); burst {len(results)} requests: "
          f"{len(accepted)} accepted, {len(rejected)} rejected; 503 latency median "
          f"{1000 * statistics.median(rejected):.1f} ms; accepted p50 {1000 * statistics.median(accepted):.0f} ms "
          f"p99 {1000 * accepted[int(0.99 * (len(accepted) - 1))]:.0f} ms; unloaded latency median "
          f"{1000 * statistics.median(unloaded):.1f} ms, after the burst "
          f"{1000 * statistics.median(t for _, t, _ in after):.1f} ms; RSS {rss_before:.0f} -> {rss_after:.0f} MB; "
          f"503s answered by the server within 1 / 5 / 25 ms of arrival: "
          + " / ".join(f"{served_503[le] / served_503['+Inf']:.0%}" for le in ("0.001", "0.005", "0.025")))


async def translate_burst(url: str, count: int, concurrency: int, keep_alive: bool) -> list[object]:
    """`count` translate requests, `concurrency` at a time, each an aiohttp answer (status, Retry-After, body) or
    the exception that ended it."""
    import aiohttp

    texts = ["one two three", "seven eight nine four", "five six", "zero one two three four five"]
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=not keep_alive)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def one(i: int) -> object:
            async with gate:
                try:
                    body = {"model": "numbers", "texts": [texts[i % 4]], "beam_size": 1}
                    async with session.post(f"{url}/v1/translate", json=body) as r:
                        return r.status, r.headers.get("Retry-After"), await r.read()
                except (aiohttp.ClientError, OSError) as exc:
                    return exc

        return await asyncio.gather(*[one(i) for i in range(count)])


def answered(results: list[object]) -> list[tuple[int, str | None, bytes]]:
    errors = [r for r in results if not isinstance(r, tuple)]
    assert not errors, f"{len(errors)} requests got no answer; first: {errors[0]!r}"
    for status, retry_after, _ in results:  # type: ignore[misc]
        assert status == 200 or (status == 503 and retry_after), status
    return results  # type: ignore[return-value]


def test_a_burst_past_the_open_file_soft_limit_is_answered_in_full(repo, tmp_path):
    """Each connection is a file. With the usual soft limit (here 128), a burst of 600 connections ran the process
    out of descriptors, and the event loop dropped connections unanswered; seqserve serve raises its soft limit to
    the hard limit, so every request gets an answer."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    server = ProcessServer(repo, tmp_path / "server.log", response_cache_entries="0", open_files=(128, hard))
    try:
        results = answered(asyncio.run(translate_burst(server.url, 2000, 600, keep_alive=False)))
    finally:
        assert server.stop() == 0
    assert sum(status == 200 for status, _, _ in results) > 0
    assert f"open-file limit {hard}:" in (tmp_path / "server.log").read_text()


def test_connections_past_max_connections_get_503_with_retry_after(repo, tmp_path):
    server = ProcessServer(repo, tmp_path / "server.log", response_cache_entries="0", max_connections="20",
                           retry_after_s="3")
    try:
        results = answered(asyncio.run(translate_burst(server.url, 600, 120, keep_alive=True)))
        after = httpx.post(f"{server.url}/v1/translate", json={"model": "numbers", "texts": ["two five"]}, timeout=30)
    finally:
        assert server.stop() == 0
    refused = [(r, body) for status, r, body in results if status == 503]
    assert refused and sum(status == 200 for status, _, _ in results) > 0
    assert all(r == "3" and b"max_connections=20" in body for r, body in refused)
    assert after.status_code == 200  # with the burst gone, a request is served again
