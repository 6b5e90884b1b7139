"""Overload, deadlines, failures, disconnects, hot reload and SIGTERM, with faults injected into a real server."""
# Servers here run without the response cache: the faults and loads need every text computed, repeats included.

from __future__ import annotations

import asyncio
import gc
import re
import shutil
import socket
import threading
import time
import weakref

import httpx
import pytest

from tests.fixtures import ProcessServer
from tests.service.api.test_api import NEGATIVE, POSITIVE, burst, classify, metric


def slow(model, seconds: float, calls: list[int] | None = None):  # type: ignore[no-untyped-def]
    """Wrap a served model's compute so a batch takes at least `seconds` (and record batch sizes)."""
    original = model.queue.run

    def run(payloads):  # type: ignore[no-untyped-def]
        if calls is not None:
            calls.append(len(payloads))
        time.sleep(seconds)
        return original(payloads)

    model.queue.run = run
    return original


def wait_for(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Poll a condition of the server's state until it holds (a failure, not a hang, if it never does)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


async def until(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """wait_for inside the event loop."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def held(model, entered: threading.Event, release: threading.Event,  # type: ignore[no-untyped-def]
         sizes: list[int] | None = None):
    """Hold each of a served model's batches until `release` is set; `entered` says the first has begun
    (and `sizes`, when given, has the batch sizes by then)."""
    original = model.queue.run

    def run(payloads):  # type: ignore[no-untyped-def]
        if sizes is not None:
            sizes.append(len(payloads))
        entered.set()
        assert release.wait(60), "never released"
        return original(payloads)

    model.queue.run = run


def test_full_queue_gets_503_with_retry_after_and_accepted_requests_finish(make_server):
    server = make_server(response_cache_entries=0, max_queue_size=4, max_batch_size=2, retry_after_s=2)
    model = server.manager.models["reviews"]
    entered, release, sizes = threading.Event(), threading.Event(), []
    held(model, entered, release, sizes)

    async def scenario() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=24)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            tasks = [asyncio.create_task(client.post(f"{server.url}/v1/classify", json={"texts": [POSITIVE]}))
                     for _ in range(24)]
            await asyncio.to_thread(entered.wait, 30)
            # every request is either in the held batch (1 or 2 texts), queued (4 at most) or refused at once;
            # whether the queue filled before the batcher took its first batch is up to timing
            await until(lambda: sum(t.done() for t in tasks) + model.queue.depth + sum(sizes) == 24)
            assert not any(t.done() and t.result().status_code == 200 for t in tasks)
            assert len(sizes) == 1 and sizes[0] in (1, 2) and model.queue.depth <= 4
            release.set()
            return await asyncio.gather(*tasks)

    responses = asyncio.run(scenario())
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 503} and 4 <= codes.count(200) <= 6
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "2" and "queue is full" in r.json()["error"]
        else:
            assert r.json()["results"][0]["label"] == "pos"
    scrape = httpx.get(f"{server.url}/metrics").text
    assert metric(scrape, "seqserve_rejections_total", model="reviews", reason="queue_full") == codes.count(503)


def test_full_queue_sheds_at_the_edge_before_reading_the_body(make_server):
    """With every reachable queue full, a request gets 503 without its body being parsed; anything the
    edge cannot be sure of (another model, an unloaded version, a missing key) takes the normal path."""
    server = make_server(response_cache_entries=0, max_queue_size=2, max_batch_size=1, retry_after_s=3, api_key="k",
                         cors_origins=["http://ui.example"])
    model = server.manager.models["reviews"]
    entered, release = threading.Event(), threading.Event()
    held(model, entered, release)
    key = {"X-API-Key": "k"}
    first = threading.Thread(target=httpx.post, args=(f"{server.url}/v1/classify",),
                             kwargs={"json": {"texts": [POSITIVE]}, "headers": key, "timeout": 30})
    second = threading.Thread(target=httpx.post, args=(f"{server.url}/v1/classify",),
                              kwargs={"json": {"texts": [POSITIVE, NEGATIVE]}, "headers": key, "timeout": 30})
    first.start()
    assert entered.wait(30)  # the first request is computing, held
    second.start()
    wait_for(lambda: model.queue.depth == 2)  # the second fills the queue (2 texts)
    infer = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [POSITIVE]}]}
    shed = [httpx.post(f"{server.url}/v1/classify", content=b"{not json", headers=key),
            httpx.post(f"{server.url}/v2/models/reviews/infer", json=infer, headers=key)]
    for r in shed:
        assert r.status_code == 503 and r.headers["retry-after"] == "3", r.text
        assert "queue is full" in r.json()["error"] and r.json()["request_id"] == r.headers["x-request-id"]
    assert httpx.post(f"{server.url}/v1/classify", json={"texts": [POSITIVE]}).status_code == 401  # no key
    browser = httpx.post(f"{server.url}/v1/classify", json={"texts": [POSITIVE]},
                         headers={**key, "Origin": "http://ui.example"})  # needs the CORS headers: normal path
    assert browser.status_code == 503 and browser.headers["access-control-allow-origin"] == "http://ui.example"
    assert httpx.post(f"{server.url}/v2/models/reviews/versions/9/infer", json=infer, headers=key).status_code == 404
    translated = httpx.post(f"{server.url}/v1/translate", json={"texts": ["two five"], "beam_size": 1}, headers=key,
                            timeout=30)
    assert translated.status_code == 200  # another model's queue has room
    release.set()
    first.join()
    second.join()
    again = httpx.post(f"{server.url}/v1/classify", json={"texts": [POSITIVE]}, headers=key, timeout=30)
    assert again.status_code == 200 and again.json()["results"][0]["label"] == "pos"  # room again
    scrape = httpx.get(f"{server.url}/metrics").text
    assert metric(scrape, "seqserve_rejections_total", model="reviews", reason="queue_full") == 3
    assert metric(scrape, "seqserve_requests_total", model="reviews", endpoint="/v2/models/{name}/infer",
                  status="503") == 1


def test_expired_deadline_gets_504_and_its_work_is_skipped(make_server):
    server = make_server(response_cache_entries=0, max_batch_size=8)
    model = server.manager.models["reviews"]
    calls: list[int] = []
    slow(model, 0.0, calls)
    entered, release = threading.Event(), threading.Event()
    held(model, entered, release)
    first = threading.Thread(target=classify, args=(server.url, [POSITIVE]))
    first.start()
    assert entered.wait(30)  # the first batch is computing, held; the next request waits in the queue
    answer: list[httpx.Response] = []
    sent = time.monotonic()
    late = threading.Thread(target=lambda: answer.append(httpx.post(
        f"{server.url}/v1/classify", json={"texts": [NEGATIVE, NEGATIVE]}, headers={"X-Timeout-Ms": "100"},
        timeout=30)))
    late.start()
    wait_for(lambda: model.queue.depth == 2 and time.monotonic() > sent + 0.2)  # queued, and past its deadline
    release.set()
    first.join()
    late.join()
    (late,) = answer
    assert late.status_code == 504 and "work skipped" in late.json()["error"]
    assert calls == [1]  # the expired texts never reached the model
    v2 = httpx.post(f"{server.url}/v2/models/reviews/infer", json={
        "parameters": {"timeout": -5}, "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]})
    assert v2.status_code == 422


def test_a_failing_batch_fails_its_requests_with_500_and_the_batcher_goes_on(make_server):
    server = make_server(response_cache_entries=0, max_queue_delay_ms=50)
    model = server.manager.models["reviews"]
    original = model.queue.run

    def broken(payloads):  # type: ignore[no-untyped-def]
        raise RuntimeError("injected fault")

    model.queue.run = broken
    responses = asyncio.run(burst(server.url, [POSITIVE, NEGATIVE, POSITIVE], concurrency=3))
    for r in responses:
        assert r.status_code == 500 and r.json()["request_id"] == r.headers["x-request-id"]
    model.queue.run = original
    assert classify(server.url, [POSITIVE]).json()["results"][0]["label"] == "pos"


def test_a_client_that_disconnects_has_its_work_dropped(make_server):
    server = make_server(response_cache_entries=0, max_batch_size=8)
    model = server.manager.models["reviews"]
    calls: list[int] = []
    slow(model, 0.0, calls)
    entered, release = threading.Event(), threading.Event()
    held(model, entered, release)
    first = threading.Thread(target=classify, args=(server.url, [POSITIVE]))
    first.start()
    assert entered.wait(30)  # held: the next request can only wait in the queue
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/classify", json={"texts": [NEGATIVE] * 3}, timeout=0.2)
    wait_for(lambda: metric(httpx.get(f"{server.url}/metrics").text, "seqserve_requests_total", model="reviews",
                            status="499") == 1)  # the server has seen the client go
    release.set()
    first.join()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        scrape = httpx.get(f"{server.url}/metrics").text
        if metric(scrape, "seqserve_rejections_total", reason="client_gone") >= 3:
            break
        time.sleep(0.1)
    assert metric(scrape, "seqserve_rejections_total", reason="client_gone") == 3
    assert metric(scrape, "seqserve_queue_depth", model="reviews") == 0
    assert calls == [1]


def test_hot_reload_during_a_burst_loses_nothing(make_server, repo):
    """Requests taken in before a load are answered by the old version, even while it is still busy with them;
    requests after the load by the new one, at once, all of them in bursts; nothing is lost."""
    server = make_server(response_cache_entries=0, enable_model_control=True, max_batch_size=4)
    shutil.copytree(repo / "reviews" / "1", repo / "reviews" / "2")
    old = server.manager.models["reviews"]
    entered, release = threading.Event(), threading.Event()
    held(old, entered, release)

    async def scenario() -> tuple[httpx.Response, list[httpx.Response], httpx.Response, list[httpx.Response]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            async def one(text: str) -> httpx.Response:
                return await client.post(f"{server.url}/v1/classify", json={"texts": [text]})

            first = asyncio.create_task(one(POSITIVE))
            await asyncio.to_thread(entered.wait, 30)  # version 1 is computing the first batch, and holds it
            queued = [asyncio.create_task(one(t)) for t in [POSITIVE, NEGATIVE] * 10]
            await until(lambda: old.queue.depth == len(queued))  # all of them wait in version 1's queue
            loaded = await client.post(f"{server.url}/v2/repository/models/reviews/load")
            assert not first.done() and not any(t.done() for t in queued)  # version 1 still has them
            after = await asyncio.gather(*[one(t) for t in [NEGATIVE, POSITIVE] * 10])  # answered by version 2
            assert not first.done()
            release.set()
            return await first, await asyncio.gather(*queued), loaded, after

    first, queued, loaded, after = asyncio.run(scenario())
    assert loaded.status_code == 200 and loaded.json()["version"] == "2"
    assert first.status_code == 200 and first.json()["version"] == 1
    assert [(r.status_code, r.json()["version"]) for r in queued] == [(200, 1)] * len(queued)
    assert [r.json()["results"][0]["label"] for r in queued] == ["pos", "neg"] * 10
    assert [(r.status_code, r.json()["version"]) for r in after] == [(200, 2)] * len(after)
    assert [r.json()["results"][0]["label"] for r in after] == ["neg", "pos"] * 10

    assert httpx.get(f"{server.url}/v2/models/reviews").json()["versions"] == ["2"]
    index = httpx.post(f"{server.url}/v2/repository/index").json()
    assert {(m["version"], m["state"]) for m in index if m["name"] == "reviews"} == {("1", "UNAVAILABLE"),
                                                                                     ("2", "READY")}
    assert httpx.post(f"{server.url}/v2/repository/models/reviews/unload").status_code == 200
    assert httpx.post(f"{server.url}/v1/classify", json={"texts": ["a"]}).status_code == 404
    assert httpx.post(f"{server.url}/v2/repository/models/reviews/load").status_code == 200


def test_sigterm_during_a_burst_answers_every_accepted_request(repo, tmp_path):
    """Every request the server took in (its access log names each one by its X-Request-Id) is answered with a 200
    that reaches its client; a client error is allowed only for a request the server never saw."""
    server = ProcessServer(repo, tmp_path / "server.log", response_cache_entries="0", log_level="debug",
                           max_queue_delay_ms="5")
    texts = [POSITIVE, NEGATIVE] * 300
    results: dict[str, httpx.Response | Exception] = {}
    half_answered = asyncio.Event()

    async def scenario() -> None:
        async def one(client: httpx.AsyncClient, i: int, text: str) -> None:
            rid = f"sigterm-{i}"
            try:
                results[rid] = await client.post(f"{server.url}/v1/classify", json={"texts": [text]},
                                                 headers={"X-Request-Id": rid})
            except httpx.HTTPError as exc:
                results[rid] = exc
            if sum(isinstance(r, httpx.Response) for r in results.values()) >= 50:
                half_answered.set()

        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            tasks = [asyncio.create_task(one(client, i, t)) for i, t in enumerate(texts)]
            await half_answered.wait()
            server.proc.send_signal(15)
            await asyncio.gather(*tasks)

    asyncio.run(scenario())
    # Wait for the drain to finish: a second SIGTERM (stop()) during interpreter shutdown would kill it.
    assert server.proc.wait(60) == 0
    server.stop()
    log = (tmp_path / "server.log").read_text()
    taken_in = dict(re.findall(r"\[(sigterm-\d+)\] POST /v1/classify (\d+)", log))
    assert len(results) == len(texts) and len(taken_in) >= 50
    assert set(taken_in.values()) == {"200"}  # nothing the server took in ended in an error
    for rid, result in results.items():
        if rid in taken_in:  # accepted: its answer reached the client, and is right
            assert isinstance(result, httpx.Response) and result.status_code == 200, (rid, result)
            assert result.headers["x-request-id"] == rid
            label = result.json()["results"][0]["label"]
            assert label == ("pos" if texts[int(rid.split("-")[1])] == POSITIVE else "neg")
        else:  # never accepted: refused or closed at the connection, never an HTTP answer
            assert isinstance(result, httpx.TransportError), (rid, result)
    assert "Application shutdown complete" in log


def test_heap_frozen_while_serving_and_a_retired_version_is_released(make_server):
    """service.serving.manager.settle_heap: long-lived objects are frozen after start-up, yet the objects of a version
    that was replaced or unloaded are freed once it has drained (not pinned in the frozen generation)."""
    server = make_server(response_cache_entries=0, enable_model_control=True)
    assert gc.get_freeze_count() > 0
    for action in ("load", "unload"):  # a reload retires version 1 in place; an unload retires the new one
        retired = weakref.ref(server.manager.models["reviews"])
        assert httpx.post(f"{server.url}/v2/repository/models/reviews/{action}").status_code == 200
        deadline = time.monotonic() + 20
        # the version is released inside settle_heap's collection, then everything left is frozen again
        while (retired() is not None or gc.get_freeze_count() == 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert retired() is None, f"the retired model's objects are still alive after {action}"
        assert gc.get_freeze_count() > 0
        if action == "load":
            assert classify(server.url, [POSITIVE]).json()["results"][0]["label"] == "pos"
    server.__exit__()
    assert gc.get_freeze_count() == 0  # stopping unfreezes: nothing stays pinned in a process that goes on


def test_sigterm_drain_bound_holds_below_one_second_with_a_body_still_trickling_in(repo, tmp_path):
    """SEQSERVE_DRAIN_TIMEOUT_S is a bound at any value: 0.5 s stops a process whose client never finishes its body
    (it was read as "no bound" below 1 s)."""
    server = ProcessServer(repo, tmp_path / "server.log", response_cache_entries="0", drain_timeout_s="0.5")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000\r\n\r\n{\"texts\": [\"")
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.1):  # a byte now and then, never the whole body
            try:
                sock.sendall(b"a")
            except OSError:
                return

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    httpx.get(f"{server.url}/v2/health/live", timeout=10)  # the trickling request is being read
    server.proc.send_signal(15)
    try:
        code = server.proc.wait(30)  # unbounded, it would wait for the body forever
    finally:
        stop.set()
        sock.close()
        server.stop()
    assert code == 0
    assert "timeout graceful shutdown exceeded" in (tmp_path / "server.log").read_text()
