"""A language model over real HTTP: /v1/complete, /v1/generate and its SSE stream, /v1/score, v2 infer through the
real tritonclient, bad input, the scheduler modes, and a client that leaves mid-stream."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.service.api.test_api import leave_a_stream, metric, sse_events


def post(url: str, path: str, **body: object) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=30)


def stream(url: str, body: dict) -> list[tuple[str, dict]]:
    return sse_events(url, "/v1/generate/stream", body)


def test_complete_suggests_words_and_completes_the_one_being_typed(make_server):
    server = make_server()
    response = post(server.url, "/v1/complete", texts=["the eleph", "a dog jumps over the "], k=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == ("animals", 1)
    typing, boundary = body["results"]
    assert typing["partial"] == "eleph" and typing["suggestions"][0]["word"] == "elephant"
    assert boundary["partial"] == "" and len(boundary["suggestions"]) == 3
    for result in body["results"]:
        probabilities = [s["probability"] for s in result["suggestions"]]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
        assert all(s["word"].startswith(result["partial"]) for s in result["suggestions"])


def test_generate_is_seeded_and_reports_its_tokens(make_server):
    server = make_server()
    body = {"texts": ["the cat", "a giraffe"], "max_tokens": 12, "temperature": 0.9, "seed": 11}
    first = post(server.url, "/v1/generate", **body).json()["results"]
    again = post(server.url, "/v1/generate", **{**body, "texts": ["a giraffe", "the cat", "a dog"]}).json()["results"]
    assert [r["token_ids"] for r in first] == [again[1]["token_ids"], again[0]["token_ids"]]
    for result in first:
        assert len(result["tokens"]) == len(result["token_ids"]) == len(result["log_probs"]) <= 12
        assert all(p <= 0 for p in result["log_probs"]) and result["seed"] == 11
        assert result["finish_reason"] in ("length", "eos") and result["prompt_tokens"] >= 2
        assert "".join(result["tokens"]) == result["text"]
    exact = post(server.url, "/v1/generate", texts=["the"], max_tokens=50, ignore_eos=True).json()["results"][0]
    assert len(exact["token_ids"]) == 50 and exact["finish_reason"] == "length"
    stopped = post(server.url, "/v1/generate", texts=["the cat"], max_tokens=40, temperature=0,
                   stop=" the").json()["results"][0]
    assert stopped["finish_reason"] == "stop" and " the" not in stopped["text"]


def test_score_gives_log_probs_and_perplexity(make_server):
    server = make_server()
    results = post(server.url, "/v1/score", texts=["the cat jumps over the fence", "fence fence cat the"]).json()
    fluent, garbled = results["results"]
    assert fluent["tokens"][-1] == "</s>" and len(fluent["tokens"]) == len(fluent["log_probs"])
    assert fluent["log_prob"] == pytest.approx(sum(fluent["log_probs"]))
    assert fluent["perplexity"] == pytest.approx(np.exp(-fluent["log_prob"] / len(fluent["tokens"])))
    assert fluent["perplexity"] < garbled["perplexity"] and not fluent["truncated"]


def test_stream_sends_each_token_then_the_result(make_server):
    server = make_server()
    body = {"text": "the kangaroo", "max_tokens": 15, "seed": 4, "temperature": 0.8}
    events = stream(server.url, body)
    kinds = [e for e, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"token"}
    done = events[-1][1]
    tokens = [d for e, d in events if e == "token"]
    assert [d["token_id"] for d in tokens] == done["token_ids"] and [d["index"] for d in tokens] == list(
        range(len(tokens)))
    assert "".join(d["text"] for d in tokens) == done["text"]
    plain = post(server.url, "/v1/generate", texts=[body["text"]], **{k: v for k, v in body.items() if k != "text"})
    assert plain.json()["results"][0]["token_ids"] == done["token_ids"]
    stopped = stream(server.url, {"text": "the cat", "max_tokens": 40, "temperature": 0, "stop": [" the"]})
    assert "".join(d["text"] for e, d in stopped if e == "token") == stopped[-1][1]["text"]
    assert stopped[-1][1]["finish_reason"] == "stop"


def test_v2_infer_scores_and_completes_through_tritonclient(make_server):
    server = make_server()
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"the eleph", b"a cat"], dtype=object))
    completed = client.infer("animals", [text], parameters={"task": "complete", "k": 2})
    words = completed.as_numpy("words")
    assert words.shape == (2, 2) and words[0, 0] == b"elephant"
    assert completed.as_numpy("word_probabilities")[0, 0] > 0
    scored = client.infer("animals", [text])  # task defaults to score
    assert scored.as_numpy("log_prob").shape == (2,) and (scored.as_numpy("perplexity") > 1).all()
    assert scored.as_numpy("tokens")[1, -1] == b""  # "a cat" is the shorter: padded
    wrong = httpx.post(f"{server.url}/v2/models/animals/infer", json={
        "parameters": {"task": "complete"}, "outputs": [{"name": "perplexity"}],
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]})
    assert wrong.status_code == 422 and "do not come with these parameters" in wrong.json()["error"]
    metadata = client.get_model_metadata("animals")
    assert {o["name"] for o in metadata["outputs"]} >= {"words", "log_prob"}


BAD_REQUESTS = [
    ("/v1/complete", {"k": 0}, "k"), ("/v1/complete", {"k": 1000}, "k"),
    ("/v1/generate", {"max_tokens": 10**6}, "max_output_tokens=256"),
    ("/v1/generate", {"temperature": -1}, "temperature"),
    ("/v1/generate", {"top_p": 0}, "top_p"), ("/v1/generate", {"stop": [""]}, "stop"),
    ("/v1/generate", {"seed": -1}, "seed"), ("/v1/score", {"texts": ["  "]}, "whitespace"),
    ("/v1/score", {"texts": []}, "texts"), ("/v1/complete", {"model": "numbers"}, "numbers"),
]


def test_bad_requests_get_a_clear_4xx(make_server):
    server = make_server()
    for path, extra, message in BAD_REQUESTS:
        response = post(server.url, path, **{"texts": ["the cat"], **extra})
        assert 400 <= response.status_code < 500 and message in response.text, (path, extra, response.text)


def test_every_scheduler_mode_gives_the_same_answers(make_server):
    servers = [make_server(), make_server(scheduler="static"), make_server(scheduler="none")]
    body = {"texts": ["the dog", "a hippopotamus runs"], "max_tokens": 10, "seed": 2}
    answers = [[r["token_ids"] for r in post(s.url, "/v1/generate", **body).json()["results"]] for s in servers]
    assert answers[0] == answers[1] == answers[2]
    words = [post(s.url, "/v1/complete", texts=["the wat"], k=2).json()["results"][0]["suggestions"][0]["word"]
             for s in servers]
    assert words[0] == words[1] == words[2] and words[0].startswith("wat")


def test_a_stream_whose_client_disconnects_frees_its_row(make_server):
    server = make_server()
    runner = server.manager.models["animals"].queue.engine.runtime.runner
    body = {"text": "the cat", "max_tokens": 250, "ignore_eos": True}
    scrape = leave_a_stream(server.url, runner, "/v1/generate/stream", body, "animals")
    assert metric(scrape, "seqserve_rejections_total", model="animals", reason="client_gone") == 1
    assert metric(scrape, "seqserve_active_sequences", model="animals") == 0
    assert post(server.url, "/v1/generate", texts=["a"], max_tokens=3).status_code == 200
