"""Every endpoint and error path over real HTTP against a real server and real onnxruntime sessions."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import numpy as np
import pytest

POSITIVE = "the film is superb and the cast is charming"
NEGATIVE = "a dull movie with a tedious plot"


def classify(url: str, texts: list[str], **extra: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/classify", json={"texts": texts, **extra}, timeout=30)


def test_classify_returns_label_score_and_probabilities(make_server):
    server = make_server()
    response = classify(server.url, [POSITIVE, NEGATIVE])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "reviews" and body["version"] == 1
    assert [r["label"] for r in body["results"]] == ["pos", "neg"]
    for result in body["results"]:
        assert set(result["probabilities"]) == {"neg", "pos"}
        assert result["score"] == max(result["probabilities"].values())
        assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    assert response.headers["x-request-id"]
    given = httpx.post(f"{server.url}/v1/classify", json={"texts": ["x y"]}, headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"


def test_v2_health_metadata_and_infer(make_server):
    url = make_server().url
    assert httpx.get(f"{url}/v2").json()["extensions"] == ["binary_tensor_data", "model_repository"]
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    meta = httpx.get(f"{url}/v2/models/reviews").json()
    assert meta["versions"] == ["1"] and meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "score", "probabilities"]
    assert httpx.get(f"{url}/v2/models/reviews/versions/1").json() == meta
    assert httpx.get(f"{url}/v2/models/reviews/ready").status_code == 200
    assert httpx.get(f"{url}/v2/models/reviews/versions/1/ready").status_code == 200
    texts = [POSITIVE, NEGATIVE]
    request = {"id": "r1", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}],
               "outputs": [{"name": "label"}, {"name": "probabilities"}]}
    for path in ("/v2/models/reviews/infer", "/v2/models/reviews/versions/1/infer"):
        response = httpx.post(url + path, json=request)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == "r1" and body["model_version"] == "1"
        assert body["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["pos", "neg"]}
        assert body["outputs"][1]["shape"] == [2, 2] and len(body["outputs"][1]["data"]) == 4


def test_tritonclient_metadata_ready_and_infer(make_server):
    import tritonclient.http as triton

    url = make_server().url
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("reviews")
    assert client.get_model_metadata("reviews")["name"] == "reviews"
    for binary in (True, False):
        text = triton.InferInput("text", [2], "BYTES")
        text.set_data_from_numpy(np.array([POSITIVE.encode(), NEGATIVE.encode()], dtype=np.object_),
                                 binary_data=binary)
        outputs = [triton.InferRequestedOutput("label", binary_data=False),
                   triton.InferRequestedOutput("score", binary_data=False)]
        result = client.infer("reviews", [text], outputs=outputs, timeout=5_000_000)
        assert [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")] == ["pos", "neg"]
        assert result.as_numpy("score").shape == (2,)
    client.close()


def test_tritonclient_with_its_defaults_gets_binary_outputs(make_server):
    """tritonclient asks for binary outputs by default (each InferRequestedOutput, or binary_data_output when it
    names none): the answers must be the JSON answers, for every kind."""
    import tritonclient.http as triton

    url = make_server().url
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    cases = [("reviews", [POSITIVE, NEGATIVE], ["label", "score", "probabilities"]),
             ("numbers", ["one two", "three four five"], ["translation", "score"]),
             ("flights", ["show me flights from boston to new york", "how much is a ticket to miami"],
              ["tags", "token_offsets", "token_scores", "entities", "intent", "intent_score",
               "intent_probabilities"])]
    for model, texts, names in cases:
        text = triton.InferInput("text", [len(texts)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
        json_answer = httpx.post(f"{url}/v2/models/{model}/infer", timeout=60, json={
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}).json()
        expected = {o["name"]: o for o in json_answer["outputs"]}
        mixed = [triton.InferRequestedOutput(names[0]), triton.InferRequestedOutput(names[1], binary_data=False)]
        for outputs, binary in ((None, set(names)), ([triton.InferRequestedOutput(n) for n in names], set(names)),
                                (mixed, {names[0]})):
            result = client.infer(model, [text], outputs=outputs)
            for name in names if outputs is None else [o.name() for o in outputs]:
                got, want = result.as_numpy(name), expected[name]
                assert list(got.shape) == want["shape"]
                flat = got.reshape(-1).tolist()
                if want["datatype"] == "BYTES":
                    assert [x.decode() if isinstance(x, bytes) else x for x in flat] == want["data"]
                else:
                    assert flat == pytest.approx(want["data"], abs=1e-6)  # float32 on the wire
            sent = result.get_response()["outputs"]
            assert {o["name"] for o in sent if "binary_data_size" in o.get("parameters", {})} == binary
    client.close()


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "message"),
    [
        ("/v1/classify", {"content": b'{"texts": ["a"', "headers": {"content-type": "application/json"}}, 400,
         "malformed JSON"),
        ("/v1/classify", {"json": {"texts": "not a list"}}, 422, "texts"),
        ("/v1/classify", {"json": {}}, 422, "texts: Field required"),
        ("/v1/classify", {"json": {"texts": ["a"], "colour": "red"}}, 422, "colour"),
        ("/v1/classify", {"json": {"texts": []}}, 422, "texts"),
        ("/v1/classify", {"json": {"texts": ["fine", "  \n\t"]}}, 422, "texts[1] is empty or whitespace only"),
        ("/v1/classify", {"json": {"texts": ["a"] * 300}}, 413, "max_texts_per_request=256"),
        ("/v1/classify", {"json": {"texts": ["a" * 20_000]}}, 413, "max_chars_per_text=10000"),
        ("/v1/classify", {"json": {"texts": ["a\x00b"]}}, 422, "NUL"),
        ("/v1/classify", {"json": {"model": "nope", "texts": ["a"]}}, 404, "unknown model 'nope'"),
        ("/v1/classify", {"json": {"model": "../x", "texts": ["a"]}}, 404, "unknown model"),
        ("/v1/classify", {"content": b"texts=a", "headers": {"content-type": "text/plain"}}, 415, "application/json"),
        ("/v1/classify", {"content": b"x" * 5_000_000, "headers": {"content-type": "application/json"}}, 413,
         "max_body_bytes"),
        ("/v1/classify", {"content": b"\x1f\x8b", "headers": {"content-type": "application/json",
                                                              "content-encoding": "gzip"}}, 415, "uncompressed"),
        ("/v1/translate", {"json": {"model": "reviews", "texts": ["a"]}}, 404, "is a classifier, not a translator"),
        ("/v2/models/nope/infer", {"json": {"inputs": []}}, 404, "unknown model"),
        ("/v2/models/reviews/versions/9/infer", {"json": {"inputs": []}}, 404, "version 9 is not loaded"),
        ("/v2/models/reviews/infer", {"json": {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1],
                                                           "data": [1.0]}]}}, 422, "datatype BYTES"),
        ("/v2/models/reviews/infer", {"json": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3],
                                                           "data": ["a"]}]}}, 422, "shape [3] but 1 elements"),
        ("/v2/models/reviews/infer", {"json": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                                           "data": ["a"]}], "outputs": [{"name": "x"}]}}, 422,
         "unknown output"),
        ("/v2/models/reviews/infer", {"content": b"{]", "headers": {"content-type": "application/json"}}, 400,
         "malformed JSON"),
        ("/v2/repository/index", {}, 403, "model control is disabled"),
    ],
)
def test_bad_requests_get_a_clear_4xx_and_the_service_goes_on(make_server, path, kwargs, status, message):
    server = make_server()
    response = httpx.post(server.url + path, timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"] and response.json()["request_id"]
    assert classify(server.url, [POSITIVE]).json()["results"][0]["label"] == "pos"


def test_unknown_routes_and_versions_are_404(make_server):
    url = make_server().url
    assert httpx.get(f"{url}/v2/models/nope").status_code == 404
    assert httpx.get(f"{url}/v2/models/reviews/versions/2").status_code == 404
    assert httpx.get(f"{url}/v2/models/%2e%2e/ready").status_code == 404


async def burst(url: str, texts: list[str], concurrency: int, **headers: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return await asyncio.gather(*[client.post(f"{url}/v1/classify", json={"texts": [t]}, headers=headers)
                                      for t in texts])


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def sse_events(url: str, path: str, body: dict[str, Any], **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
    """A stream route's events, (event, data), read to the end."""
    events: list[tuple[str, dict[str, Any]]] = []
    event = ""
    with httpx.stream("POST", f"{url}{path}", json=body, timeout=30, **kwargs) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[6:])))
    return events


def leave_a_stream(url: str, runner: Any, path: str, body: dict[str, Any], model: str) -> str:
    """Slow the runner's steps, read a stream up to its first token and leave; -> /metrics once the scheduler has
    counted the client gone (or after 10 s)."""
    original = runner.step

    def slow_step(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.05)
        return original(*args, **kwargs)

    runner.step = slow_step
    try:
        with httpx.stream("POST", f"{url}{path}", json=body, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("event: token"):
                    break  # the client goes away mid-stream
        deadline = time.monotonic() + 10
        while True:
            scrape = httpx.get(f"{url}/metrics").text
            gone = metric(scrape, "seqserve_rejections_total", model=model, reason="client_gone")
            if gone >= 1 or time.monotonic() > deadline:
                return scrape
            time.sleep(0.05)
    finally:
        runner.step = original


def test_concurrent_burst_is_batched_and_every_answer_is_correct(make_server):
    server = make_server(max_queue_delay_ms=20, response_cache_entries=0)  # every text computed, in batches
    texts = [POSITIVE if i % 2 else NEGATIVE + " " + "plot " * (i % 7) for i in range(96)]
    alone = {t: classify(server.url, [t]).json()["results"][0] for t in set(texts)}
    responses = asyncio.run(burst(server.url, texts, concurrency=48))
    for text, response in zip(texts, responses, strict=True):
        assert response.status_code == 200
        result = response.json()["results"][0]
        assert result["label"] == alone[text]["label"]
        for label, p in result["probabilities"].items():
            assert p == pytest.approx(alone[text]["probabilities"][label], abs=1e-5)  # batched == alone
    scrape = httpx.get(f"{server.url}/metrics").text
    batches = metric(scrape, "seqserve_batch_size_count", model="reviews")
    batched_texts = metric(scrape, "seqserve_batch_size_sum", model="reviews")
    assert batched_texts / batches > 1.0
    assert metric(scrape, "seqserve_requests_total", model="reviews", status="200") == 96 + len(alone)


def test_metrics_pass_promtool(make_server, tmp_path):
    import shutil
    import subprocess

    server = make_server()
    classify(server.url, [POSITIVE])
    httpx.post(f"{server.url}/v1/classify", json={"texts": [""]})
    scrape = httpx.get(f"{server.url}/metrics").text
    for name in ("seqserve_request_duration_seconds_bucket", "seqserve_queue_wait_seconds_bucket",
                 "seqserve_inference_duration_seconds_bucket", "seqserve_batch_size_bucket", "seqserve_queue_depth",
                 "seqserve_tokens_total", "seqserve_model_info"):
        assert name in scrape, name
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: make test installs Debian's prometheus package"
    result = subprocess.run([promtool, "check", "metrics"], input=scrape, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_openapi_documents_every_endpoint_with_examples(make_server):
    spec = httpx.get(f"{make_server().url}/openapi.json").json()
    for path in ("/v1/classify", "/v1/translate", "/v2/models/{name}/infer", "/v2/health/ready",
                 "/v2/repository/models/{name}/load"):
        assert path in spec["paths"], path
    assert "examples" in json.dumps(spec["components"]["schemas"]["ClassifyRequest"])
