"""The bad-input matrix: every inference endpoint, every case, over real HTTP; never a 5xx, and the
next good request is still served correctly."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench.server import free_port
from service.settings import Settings
from tests.fixtures import ThreadServer

ENDPOINTS = ["classify", "translate", "stream", "v2-classifier", "v2-translator"]
GOOD = {"classify": "the film is superb", "translate": "one two", "stream": "one two",
        "v2-classifier": "the film is superb", "v2-translator": "three four"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, classifier_version, translator_version) -> Iterator[ThreadServer]:
    root = tmp_path_factory.mktemp("matrix")
    shutil.copytree(classifier_version, root / "reviews" / "1")
    shutil.copytree(translator_version, root / "numbers" / "1")
    with ThreadServer(Settings(model_repository=root, port=free_port())) as running:
        yield running


def request_for(endpoint: str, texts: Any = None, **extra: Any) -> tuple[str, dict[str, Any]]:
    """Path and JSON body carrying `texts` in the endpoint's own shape."""
    if endpoint == "classify":
        return "/v1/classify", {"model": "reviews", "texts": texts, **extra}
    if endpoint == "translate":
        return "/v1/translate", {"model": "numbers", "texts": texts, **extra}
    if endpoint == "stream":
        text = texts[0] if isinstance(texts, list) and len(texts) == 1 else texts
        return "/v1/translate/stream", {"model": "numbers", "text": text, **extra}
    model = "reviews" if endpoint == "v2-classifier" else "numbers"
    shape = [len(texts)] if isinstance(texts, list) else [1]
    body: dict[str, Any] = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape, "data": texts}]}
    if extra:
        body["parameters"] = extra
    return f"/v2/models/{model}/infer", body


def send(server: ThreadServer, path: str, **kwargs: Any) -> httpx.Response:
    if "stream" in path and "json" in kwargs:
        with httpx.stream("POST", server.url + path, timeout=30, **kwargs) as response:
            response.read()
            return response
    return httpx.post(server.url + path, timeout=30, **kwargs)


def check_still_serving(server: ThreadServer, endpoint: str) -> None:
    path, body = request_for(endpoint, [GOOD[endpoint]])
    response = send(server, path, json=body)
    assert response.status_code == 200, response.text
    if endpoint == "stream":
        assert "event: done" in response.text
    elif endpoint == "classify":
        assert response.json()["results"][0]["label"] == "pos"
    elif endpoint == "translate":
        assert response.json()["results"][0]["translation"]
    else:
        assert response.json()["outputs"][0]["data"][0]


def expect(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert message.lower() in body["error"].lower() and body["request_id"], body


def raw_body(endpoint: str, name: str) -> bytes:
    """The endpoint's own body, then broken at the byte level as the case says."""
    _, body = request_for(endpoint, ["MARK"])
    data = json.dumps(body).encode()  # ensure_ascii: a lone surrogate stays an escape sequence
    if name == "malformed JSON":
        return data[:-3]
    if name == "invalid UTF-8 bytes":
        return data.replace(b"MARK", b"a\xff\xfe")
    if name == "lone surrogate":
        return data.replace(b"MARK", b"\\ud800x")
    return data


RAW_CASES = [  # (name, content-type, extra headers, status, message)
    ("malformed JSON", "application/json", {}, 400, "malformed"),
    ("invalid UTF-8 bytes", "application/json", {}, 400, "UTF-8"),
    ("wrong content-type", "text/plain", {}, 415, "application/json"),
    ("gzip bomb", "application/json", {"Content-Encoding": "gzip"}, 415, "uncompressed"),
    ("lone surrogate", "application/json", {}, 422, "surrogate"),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("name", "content_type", "headers", "status", "message"), RAW_CASES,
                         ids=[c[0] for c in RAW_CASES])
def test_raw_body_cases(server, endpoint, name, content_type, headers, status, message):
    path, _ = request_for(endpoint, ["x"])
    raw = raw_body(endpoint, name)
    if name == "gzip bomb":
        raw = gzip.compress(b"[" * 10_000_000)  # 10 MB of brackets in a few kB
    expect(send(server, path, content=raw, headers={"content-type": content_type, **headers}), status, message)
    check_still_serving(server, endpoint)


TEXT_CASES: list[tuple[str, Any, int, str]] = [  # (name, texts, status, message)
    ("wrong type", "not a list", 422, ""),
    ("wrong element type", [5], 422, ""),
    ("empty list", [], 422, ""),
    ("10,000 texts", ["a"] * 10_000, 413, "max_texts_per_request"),
    ("empty text", [""], 422, "empty"),
    ("whitespace-only text", [" \t\n "], 422, "whitespace"),
    ("1 MB of text", ["a" * 1_000_000], 413, "max_chars_per_text"),
    ("NUL character", ["a\x00b"], 422, "NUL"),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("name", "texts", "status", "message"), TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_text_cases(server, endpoint, name, texts, status, message):
    if endpoint == "stream" and name in ("10,000 texts", "empty list", "wrong type"):
        texts = {"10,000 texts": ["a" * 20_000], "empty list": [5], "wrong type": [["a"]]}[name]
        status, message = (413, "max_chars_per_text") if name == "10,000 texts" else (422, "")
    path, body = request_for(endpoint, texts)
    expect(send(server, path, json=body), status, message)
    check_still_serving(server, endpoint)


VALID_UNICODE = [
    ("right-to-left", "مرحبا بالعالم هذا فيلم رائع"),
    ("combining marks", "e\u0301te\u0301 cafe\u0301 n\u0303 a\u0308\u0304"),
    ("emoji", "👍🏽 🎬🍿 great 😀"),
    ("Chinese", "我非常喜欢这部电影"),
    ("control characters", "tab\there\x01\x1b[31m bell\x07"),
    ("mixed scripts", "Ünïcödé Ελληνικά русский 日本語 한국어 עברית"),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("name", "text"), VALID_UNICODE, ids=[c[0] for c in VALID_UNICODE])
def test_any_valid_unicode_is_served(server, endpoint, name, text):
    path, body = request_for(endpoint, [text])
    response = send(server, path, json=body)
    assert response.status_code == 200, response.text[:300]
    check_still_serving(server, endpoint)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_missing_and_extra_fields(server, endpoint):
    path, body = request_for(endpoint, ["one"])
    expect(send(server, path, json={}), 422, "")
    expect(send(server, path, json={**body, "colour": "red"}), 422, "colour")
    check_still_serving(server, endpoint)


@pytest.mark.parametrize("endpoint", ["translate", "stream", "v2-translator"])
@pytest.mark.parametrize(("option", "value", "message"), [
    ("beam_size", 0, "beam_size"), ("beam_size", -1, "beam_size"), ("beam_size", 10**6, "beam_size"),
    ("beam_size", "wide", "beam_size"), ("max_length", 0, "max_length"), ("max_length", 10**9, "max_length"),
])
def test_decoding_options(server, endpoint, option, value, message):
    if endpoint == "v2-translator" and option == "max_length":
        option, message = "max_length", "max_length"
    path, body = request_for(endpoint, ["one two"], **{option: value})
    expect(send(server, path, json=body), 422, message)
    check_still_serving(server, endpoint)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/classify", {"model": "nope", "texts": ["a"]}),
    ("/v1/classify", {"model": "../reviews", "texts": ["a"]}),
    ("/v1/translate", {"model": "..%2Fnumbers", "texts": ["a"]}),
    ("/v1/translate/stream", {"model": "/etc/passwd", "text": "a"}),
    ("/v2/models/nope/infer", {"inputs": []}),
    ("/v2/models/%2e%2e/infer", {"inputs": []}),
    ("/v2/models/..%2Freviews/infer", {"inputs": []}),
    ("/v2/models/reviews/versions/9/infer", {"inputs": []}),
    ("/v2/models/numbers/versions/0/infer", {"inputs": []}),
])
def test_unknown_models_versions_and_path_traversal_are_404(server, path, body):
    response = send(server, path, json=body)
    assert response.status_code in (404, 422) and response.status_code != 500, response.text
    assert response.json()["error"]
    check_still_serving(server, "classify")


@pytest.mark.parametrize("endpoint", ["v2-classifier", "v2-translator"])
@pytest.mark.parametrize(("tensor", "message"), [
    ({"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}, "datatype BYTES"),
    ({"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}, "shape [2] but 1 elements"),
    ({"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}, "shape [N] or [N, 1]"),
    ({"name": "ids", "datatype": "BYTES", "shape": [1], "data": ["a"]}, "one input named 'text'"),
    ({"name": "text", "datatype": "BYTES", "shape": [1], "data": [7]}, "must be strings"),
])
def test_v2_wrong_datatype_or_shape(server, endpoint, tensor, message):
    path, _ = request_for(endpoint, ["a"])
    expect(send(server, path, json={"inputs": [tensor]}), 422, message)
    check_still_serving(server, endpoint)
