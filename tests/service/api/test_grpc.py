"""OIP v2 over gRPC with the real tritonclient.grpc against a real server (REST beside it on the same app): every
kind, the repository extension, keys, deadlines, overload, metrics, and a burst whose answers match REST's."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from tritonclient.utils import InferenceServerException

from service.api import grpc_v2
from tests.service.api.test_api import NEGATIVE, POSITIVE, metric
from tests.service.test_faults import held, slow, wait_for

CASES = [  # model, texts, v2 parameters
    ("reviews", [POSITIVE, NEGATIVE], {}),
    ("numbers", ["one two", "three four five"], {"beam_size": 2}),
    ("flights", ["show me flights from boston to new york", "how much is a ticket to miami"], {}),
    ("animals", ["the cat sat on the", "a dog"], {}),
    ("animals", ["the cat sat on the"], {"task": "complete", "k": 3}),
]


def grpc_server(make_server, **overrides: Any):  # type: ignore[no-untyped-def]
    server = make_server(grpc_port=0, **overrides)
    assert server.app.grpc_port
    return server, f"127.0.0.1:{server.app.grpc_port}"


def text_input(texts: list[str]) -> tg.InferInput:
    tensor = tg.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    return tensor


def rest_answer(url: str, model: str, texts: list[str], params: dict[str, Any]) -> dict[str, Any]:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    response = httpx.post(f"{url}/v2/models/{model}/infer", json={**body, "parameters": params} if params else body,
                          timeout=60)
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def assert_same(result: Any, expected: dict[str, Any], rtol: float = 0.0) -> None:
    """The outputs REST gave; floats bit for bit unless `rtol` (answers from batches of other sizes)."""
    assert [o.name for o in result.get_response().outputs] == list(expected)
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert list(got.shape) == want["shape"], name
        flat = got.reshape(-1).tolist()
        if want["datatype"] == "BYTES":
            assert [x.decode() for x in flat] == want["data"], name
        else:
            dtype = {"FP32": np.float32, "INT64": np.int64}[want["datatype"]]
            if rtol and dtype is np.float32:
                np.testing.assert_allclose(got.reshape(-1), np.asarray(want["data"], dtype=dtype), rtol=rtol,
                                           err_msg=name)
            else:
                assert flat == np.asarray(want["data"], dtype=dtype).tolist(), name  # the same value, as sent


def test_the_service_definition_is_wire_compatible_with_tritons():
    """Every message and field we define has the number and type Triton's grpc_service.proto gives it."""
    from tritonclient.grpc import service_pb2

    theirs = service_pb2.DESCRIPTOR.pool
    stack, seen, checked = [cls.DESCRIPTOR for cls in grpc_v2.messages().values()], set(), 0
    while stack:  # every message reachable from the RPCs' requests and responses
        ours = stack.pop()
        if ours.full_name in seen:
            continue
        seen.add(ours.full_name)
        other = theirs.FindMessageTypeByName(ours.full_name)
        for field in ours.fields:
            match = other.fields_by_name[field.name]
            assert (match.number, match.type) == (field.number, field.type), f"{ours.full_name}.{field.name}"
            checked += 1
            if field.message_type is not None:
                stack.append(field.message_type)
    assert {"inference.InferParameter", "inference.InferTensorContents",
            "inference.ModelInferRequest.InferInputTensor"} <= seen and checked > 70
    methods = {m.name for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    assert set(grpc_v2.RPCS) <= methods


def test_health_metadata_and_every_kind_through_tritonclient(make_server):
    server, address = grpc_server(make_server)
    client = tg.InferenceServerClient(address)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "seqserve" and meta["extensions"] == ["binary_tensor_data", "model_repository"]
    assert client.is_model_ready("reviews") and client.is_model_ready("reviews", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("reviews", "7")
    model = client.get_model_metadata("reviews", as_json=True)
    rest = httpx.get(f"{server.url}/v2/models/reviews").json()
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], [int(s) for s in t["shape"]]) for t in model["outputs"]] == \
        [(o["name"], o["datatype"], o["shape"]) for o in rest["outputs"]]
    for name, texts, params in CASES:
        expected = rest_answer(server.url, name, texts, params)
        result = client.infer(name, [text_input(texts)], parameters=params or None, request_id="r-7")
        assert result.get_response().id == "r-7" and result.get_response().model_version == "1"
        assert_same(result, expected)
        some = list(expected)[-1:]
        result = client.infer(name, [text_input(texts)], model_version="1", parameters=params or None,
                              outputs=[tg.InferRequestedOutput(n) for n in some])
        assert_same(result, {n: expected[n] for n in some})
    client.close()
    scrape = httpx.get(f"{server.url}/metrics").text
    assert metric(scrape, "seqserve_requests_total", model="reviews", endpoint="grpc:ModelInfer", status="200") == 2
    assert metric(scrape, "seqserve_request_duration_seconds_count", model="numbers", endpoint="grpc:ModelInfer") == 2


def test_bad_input_gets_invalid_argument_and_unknown_models_not_found(make_server):
    server, address = grpc_server(make_server, max_texts_per_request=4, max_body_bytes=4096)
    client = tg.InferenceServerClient(address)

    def status_of(call) -> tuple[str, str]:  # type: ignore[no-untyped-def]
        with pytest.raises(InferenceServerException) as caught:
            call()
        return caught.value.status(), caught.value.message()

    wrong = tg.InferInput("words", [1], "BYTES")
    wrong.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
    numbers = tg.InferInput("text", [2], "INT64")
    numbers.set_data_from_numpy(np.array([1, 2], dtype=np.int64))
    cases = [
        (lambda: client.infer("reviews", [wrong]), "INVALID_ARGUMENT", "expected one input named 'text'"),
        (lambda: client.infer("reviews", [numbers]), "INVALID_ARGUMENT", "must have datatype BYTES"),
        (lambda: client.infer("reviews", [text_input(["  "])]), "INVALID_ARGUMENT", "empty or whitespace"),
        (lambda: client.infer("reviews", [text_input(["a"] * 5)]), "INVALID_ARGUMENT", "max_texts_per_request=4"),
        (lambda: client.infer("reviews", [text_input(["a"])], outputs=[tg.InferRequestedOutput("nope")]),
         "INVALID_ARGUMENT", "unknown output"),
        (lambda: client.infer("reviews", [text_input(["a"])], model_version="x"), "INVALID_ARGUMENT",
         "positive integer"),
        (lambda: client.infer("numbers", [text_input(["one"])], parameters={"beam_size": "two"}),
         "INVALID_ARGUMENT", "parameters.beam_size"),
        (lambda: client.infer("nope", [text_input(["a"])]), "NOT_FOUND", "nope"),
        (lambda: client.infer("reviews", [text_input(["a"])], model_version="9"), "NOT_FOUND", "9"),
        (lambda: client.get_model_metadata("nope"), "NOT_FOUND", "nope"),
        (lambda: client.get_model_repository_index(), "PERMISSION_DENIED", "model control is disabled"),
    ]
    for call, code, words in cases:
        status, message = status_of(call)
        assert status == f"StatusCode.{code}" and words in message, (status, message)
    # a bad UTF-8 element in raw BYTES contents
    raw = grpc_v2.messages()["ModelInferRequest"](model_name="reviews")
    raw.inputs.add(name="text", datatype="BYTES", shape=[1])
    raw.raw_input_contents.append(b"\x02\x00\x00\x00\xff\xfe")
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as caught:
        infer_call(channel)(raw)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in caught.value.details()
    too_big = grpc_v2.messages()["ModelInferRequest"](model_name="reviews")  # past max_body_bytes
    too_big.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"a " * 3000)
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as caught:
        infer_call(channel)(too_big)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200  # the service is fine
    client.close()


def infer_call(channel: grpc.Channel) -> Any:
    types = grpc_v2.messages()
    return channel.unary_unary(f"/{grpc_v2.SERVICE}/ModelInfer",
                               request_serializer=types["ModelInferRequest"].SerializeToString,
                               response_deserializer=types["ModelInferResponse"].FromString)


def test_keys_in_metadata_and_the_repository_extension(make_server):
    server, address = grpc_server(make_server, api_key="k", control_api_key="c")
    client = tg.InferenceServerClient(address)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("reviews", [text_input([POSITIVE])])
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    for headers in ({"authorization": "Bearer k"}, {"x-api-key": "k"}):
        assert client.infer("reviews", [text_input([POSITIVE])], headers=headers).as_numpy("label")[0] == b"pos"
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_repository_index(headers={"x-api-key": "k"})  # the inference key does not control
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    control = {"authorization": "Bearer c"}
    index = client.get_model_repository_index(headers=control, as_json=True)["models"]
    assert {(m["name"], m["version"], m["state"]) for m in index} >= {("reviews", "1", "READY"),
                                                                      ("numbers", "1", "READY")}
    client.unload_model("numbers", headers=control)
    assert not client.is_model_ready("numbers")
    assert httpx.post(f"{server.url}/v1/translate", json={"texts": ["one"]}, headers={"x-api-key": "k"}
                      ).status_code == 404
    client.load_model("numbers", headers=control)
    assert client.is_model_ready("numbers", "1")
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("unknown-model", headers=control)
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    client.close()


def test_grpc_deadline_and_timeout_parameter_give_deadline_exceeded_and_skip_the_work(make_server):
    server, address = grpc_server(make_server, max_batch_size=8)
    model = server.manager.models["reviews"]
    calls: list[int] = []
    slow(model, 0.0, calls)
    entered, release = threading.Event(), threading.Event()
    held(model, entered, release)
    first = threading.Thread(target=httpx.post, args=(f"{server.url}/v1/classify",),
                             kwargs={"json": {"texts": [POSITIVE]}, "timeout": 60})
    first.start()
    assert entered.wait(30)  # the first batch computes, held: what comes next waits in the queue
    client = tg.InferenceServerClient(address)
    errors: list[InferenceServerException] = []

    def late(**kwargs: Any) -> None:
        try:
            client.infer("reviews", [text_input([NEGATIVE, NEGATIVE])], **kwargs)
        except InferenceServerException as exc:
            errors.append(exc)

    by_deadline = threading.Thread(target=late, kwargs={"client_timeout": 0.3})
    by_deadline.start()
    by_deadline.join()  # the client's deadline passed while its texts waited
    assert [e.status() for e in errors] == ["StatusCode.DEADLINE_EXCEEDED"]
    sent = time.monotonic()
    by_parameter = threading.Thread(target=late, kwargs={"timeout": 100_000})  # the v2 timeout parameter, in µs
    by_parameter.start()
    # queued behind the first request's two cancelled texts, and past its timeout
    wait_for(lambda: model.queue.depth == 4 and time.monotonic() > sent + 0.2)
    release.set()
    first.join()
    by_parameter.join()
    assert errors[1].status() == "StatusCode.DEADLINE_EXCEEDED" and "work skipped" in errors[1].message()
    assert calls == [1]  # neither late request reached the model
    scrape = httpx.get(f"{server.url}/metrics").text
    assert metric(scrape, "seqserve_requests_total", model="reviews", endpoint="grpc:ModelInfer", status="504") == 2
    client.close()


def test_a_full_queue_gets_unavailable_with_retry_after(make_server):
    server, address = grpc_server(make_server, max_queue_size=2, max_batch_size=1, retry_after_s=3)
    model = server.manager.models["reviews"]
    entered, release = threading.Event(), threading.Event()
    held(model, entered, release)
    first = threading.Thread(target=httpx.post, args=(f"{server.url}/v1/classify",),
                             kwargs={"json": {"texts": [POSITIVE]}, "timeout": 60})
    first.start()
    assert entered.wait(30)
    second = threading.Thread(target=httpx.post, args=(f"{server.url}/v1/classify",),
                              kwargs={"json": {"texts": [POSITIVE, NEGATIVE]}, "timeout": 60})
    second.start()
    wait_for(lambda: model.queue.depth == 2)  # full
    request = grpc_v2.messages()["ModelInferRequest"](model_name="reviews")
    request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(POSITIVE.encode())
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as caught:
        infer_call(channel)(request, metadata=[("x-request-id", "full-1")])
    error = caught.value
    trailing = dict(error.trailing_metadata())
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "queue is full" in error.details()
    assert trailing["retry-after"] == "3" and trailing["x-request-id"] == "full-1"
    release.set()
    first.join()
    second.join()
    with grpc.insecure_channel(address) as channel:  # room again; typed contents work as raw ones do
        answer, call = infer_call(channel).with_call(request)
    assert answer.raw_output_contents[0] == b"\x03\x00\x00\x00pos"
    assert dict(call.trailing_metadata())["x-request-id"]
    scrape = httpx.get(f"{server.url}/metrics").text
    assert metric(scrape, "seqserve_requests_total", model="reviews", endpoint="grpc:ModelInfer", status="503") == 1


def test_a_burst_over_grpc_is_batched_and_matches_rest(make_server):
    server, address = grpc_server(make_server, response_cache_entries=0)  # every text computed, in batches
    texts = [f"{a} film with a {b} cast" for a in ("a superb", "a dull", "an odd", "a tedious", "a charming")
             for b in ("great", "weak", "large", "young")]
    numbers = ["one two", "three four five", "six", "seven eight", "nine one two", "four"]
    expected_reviews = [rest_answer(server.url, "reviews", [t], {}) for t in texts]
    expected_numbers = [rest_answer(server.url, "numbers", [t], {}) for t in numbers]
    before = metric(httpx.get(f"{server.url}/metrics").text, "seqserve_batch_size_count", model="reviews")

    async def burst() -> tuple[list[Any], list[Any]]:
        client = tga.InferenceServerClient(address)
        try:  # the first review goes alone and is held computing; the rest are sent once it is
            first = asyncio.ensure_future(client.infer("reviews", [text_input([texts[0]])]))
            assert await asyncio.to_thread(entered.wait, 30)
            reviews = [client.infer("reviews", [text_input([t])]) for t in (texts * 2)[1:]]
            translations = [client.infer("numbers", [text_input([t])]) for t in numbers * 2]
            results = await asyncio.gather(first, *reviews, *translations)
        finally:
            await client.close()
        return results[:len(texts) * 2], results[len(texts) * 2:]

    model = server.manager.models["reviews"]
    entered, release = threading.Event(), threading.Event()
    held(model, entered, release)
    answers: list[tuple[list[Any], list[Any]]] = []
    sender = threading.Thread(target=lambda: answers.append(asyncio.run(burst())))
    sender.start()
    assert entered.wait(30)  # the first review's batch computes, held, while the rest arrive and queue
    wait_for(lambda: model.queue.depth == len(texts) * 2 - 1)
    release.set()
    sender.join()
    ((reviews, translations),) = answers
    # the burst runs in batches of many, REST one by one: the fp32 models' matrix products are blocked
    # differently by batch size, so scores agree to float32 rounding (a few units in the last place), not bit for bit
    for result, expected in zip(reviews, expected_reviews * 2, strict=True):
        assert_same(result, expected, rtol=1e-5)
    for result, expected in zip(translations, expected_numbers * 2, strict=True):
        assert_same(result, expected, rtol=1e-5)
    scrape = httpx.get(f"{server.url}/metrics").text
    batches = metric(scrape, "seqserve_batch_size_count", model="reviews") - before
    assert batches == 2  # the first text alone, then the 39 that queued behind it together
    assert metric(scrape, "seqserve_requests_total", model="reviews", endpoint="grpc:ModelInfer",
                  status="200") == len(texts) * 2


def test_n_best_and_paragraphs_over_grpc_match_rest(make_server):
    server, address = grpc_server(make_server)
    texts = ["two five seven", "one. three four!"]
    client = tg.InferenceServerClient(address)
    answer = client.infer("numbers", [text_input(texts)], parameters={"beam_size": 3, "num_hypotheses": 2},
                          outputs=[tg.InferRequestedOutput(n) for n in ("translation", "hypotheses",
                                                                        "hypothesis_scores")])
    rest = httpx.post(f"{server.url}/v1/translate", json={"model": "numbers", "texts": texts, "beam_size": 3,
                                                           "num_hypotheses": 2}, timeout=30).json()["results"]
    assert [t.decode() for t in answer.as_numpy("translation")] == [r["translation"] for r in rest]
    hypotheses = answer.as_numpy("hypotheses")
    assert hypotheses.shape == (2, 2)
    assert [[h.decode() for h in row] for row in hypotheses] == [[h["translation"] for h in r["hypotheses"]]
                                                                 for r in rest]
    np.testing.assert_allclose(answer.as_numpy("hypothesis_scores"),
                               [[h["score"] for h in r["hypotheses"]] for r in rest], atol=1e-5)
