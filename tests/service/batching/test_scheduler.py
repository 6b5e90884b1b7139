"""Continuous batching: the admission/retirement policy, same answers as offline decoding, SSE, disconnects."""

from __future__ import annotations

import asyncio
import random
import shutil
import threading

import httpx
import numpy as np
import pytest

from service.batching.scheduler import Candidate, ContinuousScheduler, SeqRequest, plan_admission, plan_retirement
from service.batching.seq2seq import DecodeEngine
from service.engine.repository import read_config
from service.engine.translator import DecodeOptions, TranslatorRuntime
from service.metrics import Metrics
from service.serving.translator import TranslateItem
from tests.conftest import synthetic_pairs
from tests.service.api.test_api import leave_a_stream, metric, sse_events

# ---- policy (pure functions) ----


def test_admission_is_fifo_and_stops_at_the_first_request_that_does_not_fit():
    waiting = [Candidate(rows=4, src_tokens=10), Candidate(rows=4, src_tokens=10), Candidate(rows=1, src_tokens=2)]
    assert plan_admission(waiting, free_rows=8, free_src_tokens=100, free_slots=8, now=0, idle=False).admit == [0, 1]
    # the third would fit the rows left, but it may not overtake the second
    assert plan_admission(waiting, free_rows=6, free_src_tokens=100, free_slots=8, now=0, idle=False).admit == [0]
    assert plan_admission(waiting, free_rows=8, free_src_tokens=15, free_slots=8, now=0, idle=False).admit == [0]
    assert plan_admission(waiting, free_rows=8, free_src_tokens=100, free_slots=1, now=0, idle=False).admit == [0]


def test_admission_drops_gone_and_expired_and_never_blocks_when_idle():
    waiting = [Candidate(1, 5, gone=True), Candidate(1, 5, deadline=1.0), Candidate(32, 500, deadline=9.0)]
    plan = plan_admission(waiting, free_rows=8, free_src_tokens=100, free_slots=8, now=2.0, idle=True)
    assert (plan.gone, plan.expired, plan.admit) == ([0], [1], [2])  # too big, but alone it must run
    busy = plan_admission(waiting, free_rows=8, free_src_tokens=100, free_slots=8, now=2.0, idle=False)
    assert busy.admit == []


def test_retirement_takes_finished_and_abandoned_requests():
    assert plan_retirement([False, True, False, True], [False, False, True, True]) == [1, 2, 3]


# ---- same answers as offline decoding, whatever else is in flight ----


@pytest.fixture(scope="module")
def runtime(translator_version):
    return TranslatorRuntime(translator_version, read_config(translator_version))


@pytest.fixture(scope="module")
def shortlisted(shortlisted_version):
    return TranslatorRuntime(shortlisted_version, read_config(shortlisted_version))


@pytest.mark.parametrize("which", ["runtime", "shortlisted"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scheduler_returns_the_offline_translation_under_random_interleavings(request, which, seed):
    """With a shortlist, requests with it and without it (over the whole vocabulary) share the steps."""
    runtime = request.getfixturevalue(which)
    rng = random.Random(seed)
    texts = [src for src, _ in synthetic_pairs(40, seed=100 + seed)]
    options = [DecodeOptions(beam_size=rng.choice([1, 2, 3, 5]), length_penalty=rng.choice([0.0, 0.6]),
                             shortlist=rng.random() < 0.8, early_stopping=rng.choice(["bound", "bound", "beam"]))
               for _ in texts]
    offline = [runtime.translate([t], o)[0] for t, o in zip(texts, options, strict=True)]

    async def online():
        rows, metrics = rng.choice([6, 16, 64]), Metrics()
        scheduler = ContinuousScheduler("numbers", DecodeEngine(runtime, rows, metrics, "numbers"), metrics,
                                        max_rows=rows, max_tokens=rng.choice([30, 200]), max_queue=100)

        async def one(text, opts):
            await asyncio.sleep(rng.random() * 0.05)  # join at a random iteration
            ids = runtime.encode([text])[0]
            (future,) = scheduler.submit([TranslateItem(ids, opts)], [len(ids)])
            return await future

        results = await asyncio.gather(*[one(t, o) for t, o in zip(texts, options, strict=True)])
        await scheduler.close(5)
        return results

    for expected, got in zip(offline, asyncio.run(online()), strict=True):
        assert got.target_ids == expected.target_ids and got.text == expected.text
        assert got.score == pytest.approx(expected.score, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_row_buffers_keep_each_request_its_own_rows_as_requests_come_and_go(runtime, seed):
    """Whatever joins and leaves (the last request filling a hole, or rows moving up, or the width
    shrinking), each active request's rows hold its own encoder memory and its decoder states."""
    rng = random.Random(seed)
    texts = [src for src, _ in synthetic_pairs(30, seed=200 + seed)]
    engine = DecodeEngine(runtime, max_rows=8, metrics=Metrics(), name="numbers")
    loop = asyncio.new_event_loop()
    waiting = [SeqRequest(TranslateItem(runtime.encode([t])[0], DecodeOptions(beam_size=rng.choice([1, 2, 3]),
                                                                               max_tokens=40)),
                          0.0, None, loop.create_future()) for t in texts]
    alone = {}
    while waiting or engine.active:
        engine.admit([waiting.pop() for _ in range(min(len(waiting), rng.randint(0, 3)))])
        finished = engine.step()
        leaving = finished + [r for r in engine.active if r not in finished and rng.random() < 0.15]
        engine.drop(leaving)
        rows = engine.buffers.rows
        assert sorted(r.first_row for r in engine.active) == [r.first_row for r in engine.active]
        assert sum(r.rows for r in engine.active) == rows and all(len(v) == rows for v in engine.states.values())
        memory = engine.buffers.view("memory")
        for r in engine.active:
            n = len(r.item.src_ids)
            if id(r) not in alone:
                alone[id(r)] = runtime.runner.encode(np.array([r.item.src_ids]), np.array([n])).memory[0]
            own = memory[r.first_row: r.first_row + r.rows]
            np.testing.assert_allclose(own[:, :n], np.repeat(alone[id(r)][None], r.rows, 0), atol=1e-5)
            assert not own[:, n:].any() and (engine.buffers.lengths[r.first_row: r.first_row + r.rows] == n).all()
        assert engine.buffers.width >= max((len(r.item.src_ids) for r in engine.active), default=0)
    loop.close()


# ---- over HTTP ----


def stream(url: str, body: dict, **kwargs) -> list[tuple[str, dict]]:
    return sse_events(url, "/v1/translate/stream", body, **kwargs)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_sse_streams_tokens_then_the_full_result(make_server, beam_size):
    server = make_server()
    text = "three one four one five"
    events = stream(server.url, {"model": "numbers", "text": text, "beam_size": beam_size})
    kinds = [e for e, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"token"} and len(kinds) > 2
    done = events[-1][1]
    assert "".join(d["text"] for e, d in events if e == "token").strip() == done["translation"]
    assert [d["index"] for e, d in events if e == "token"] == list(range(len(kinds) - 1))
    plain = httpx.post(f"{server.url}/v1/translate",
                       json={"model": "numbers", "texts": [text], "beam_size": beam_size}).json()
    assert plain["results"][0]["translation"] == done["translation"]


def test_translate_endpoint_with_attention_and_v2(make_server):
    server = make_server()
    body = {"model": "numbers", "texts": ["two two", "nine eight seven"], "return_attention": True, "beam_size": 2}
    result = httpx.post(f"{server.url}/v1/translate", json=body).json()["results"][0]
    assert len(result["attention"]) == len(result["target_tokens"])
    assert all(len(row) == len(result["source_tokens"]) for row in result["attention"])
    assert all(sum(row) == pytest.approx(1.0, abs=1e-3) for row in result["attention"])
    v2 = httpx.post(f"{server.url}/v2/models/numbers/infer", json={
        "parameters": {"beam_size": 2},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["two two"]}]}).json()
    assert v2["outputs"][0]["data"] == [result["translation"]]


@pytest.mark.parametrize(("extra", "status", "message"), [
    ({"beam_size": 0}, 422, "beam_size"), ({"beam_size": -3}, 422, "beam_size"),
    ({"beam_size": 10_000}, 422, "max_beam_size=16"), ({"max_length": 0}, 422, "max_length"),
    ({"max_length": 10**9}, 422, "max_output_tokens=256"), ({"texts": ["  "]}, 422, "whitespace"),
])
def test_translate_rejects_bad_decoding_options(make_server, extra, status, message):
    server = make_server()
    body = {"model": "numbers", "texts": ["one two"], **extra}
    for path, payload in (("/v1/translate", body), ("/v1/translate/stream",
                                                    {**{k: v for k, v in body.items() if k != "texts"},
                                                     "text": body["texts"][0]})):
        response = httpx.post(server.url + path, json=payload)
        assert response.status_code == status and message in response.json()["error"], (path, response.text)
    assert httpx.post(f"{server.url}/v1/translate", json={"model": "numbers", "texts": ["one"]}).status_code == 200


@pytest.mark.parametrize("mode", ["continuous", "static", "none"])
def test_every_scheduler_mode_gives_the_same_translations(make_server, repo, shortlisted_version, mode):
    shutil.copytree(shortlisted_version, repo / "numbers-shortlist" / "1")
    server = make_server(scheduler=mode, response_cache_entries=0)
    texts = [src for src, _ in synthetic_pairs(12, seed=42)]

    async def burst(model, extra):
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*[client.post(f"{server.url}/v1/translate", json={
                "model": model, "texts": [t], "beam_size": 2, **extra(i)}) for i, t in enumerate(texts)])

    for name, extra in (("numbers", lambda i: {}), ("numbers-shortlist", lambda i: {"shortlist": i % 3 != 0})):
        got = [r.json()["results"][0] for r in asyncio.run(burst(name, extra))]
        runtime = server.manager.models[name].runtime
        offline = [runtime.translate([t], DecodeOptions(beam_size=2, **extra(i)))[0] for i, t in enumerate(texts)]
        assert [g["translation"] for g in got] == [t.text for t in offline]
        assert [g["score"] for g in got] == pytest.approx([t.score for t in offline], abs=1e-5)


def test_a_stream_whose_client_disconnects_frees_its_rows(make_server):
    server = make_server()
    runner = server.manager.models["numbers"].queue.engine.runner
    body = {"model": "numbers", "text": "one two three four five six seven", "beam_size": 1, "max_length": 200}
    scrape = leave_a_stream(server.url, runner, "/v1/translate/stream", body, "numbers")
    assert metric(scrape, "seqserve_rejections_total", model="numbers", reason="client_gone") == 1
    assert metric(scrape, "seqserve_active_sequences", model="numbers") == 0
    assert metric(scrape, "seqserve_queue_depth", model="numbers") == 0
    assert httpx.post(f"{server.url}/v1/translate", json={"model": "numbers", "texts": ["one"]}).status_code == 200


def test_a_failing_decoder_step_fails_only_its_requests_and_decoding_goes_on(make_server):
    server = make_server()
    runner = server.manager.models["numbers"].queue.engine.runner
    original = runner.step

    def broken(*args, **kwargs):
        runner.step = original  # fails once
        raise RuntimeError("injected decoder failure")

    runner.step = broken
    failed = httpx.post(f"{server.url}/v1/translate", json={"model": "numbers", "texts": ["one two"]}, timeout=30)
    assert failed.status_code == 500 and failed.json()["request_id"] == failed.headers["x-request-id"]
    again = httpx.post(f"{server.url}/v1/translate", json={"model": "numbers", "texts": ["one two"]}, timeout=30)
    assert again.status_code == 200 and again.json()["results"][0]["translation"]


def test_translation_metrics_are_exported(make_server):
    server = make_server()
    worker = threading.Thread(target=stream, args=(server.url, {"model": "numbers", "text": "one two"}))
    worker.start()
    worker.join()
    scrape = httpx.get(f"{server.url}/metrics").text
    for name in ("seqserve_active_sequences", "seqserve_decode_step_duration_seconds_bucket",
                 "seqserve_time_to_first_token_seconds_bucket", "seqserve_generated_tokens_per_request_bucket",
                 "seqserve_generated_tokens_total"):
        assert name in scrape, name
    assert metric(scrape, "seqserve_generated_tokens_total", model="numbers") >= 2
