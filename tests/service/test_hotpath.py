"""POST /v1/classify bypasses the framework's layers (service.hotpath); its answers must be the framework's.

Two real servers on the same repository, one with the hot path and one with it switched off, get the same
requests; status, content type, Retry-After, JSON body (minus the request id) and the metrics must agree."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.bench.server import free_port
from service.settings import Settings
from tests.fixtures import ThreadServer

KEY = {"x-api-key": "k"}
JSON = {"content-type": "application/json", **KEY}


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


CASES: list[tuple[str, dict[str, str], bytes]] = [
    ("one text", JSON, body(model="reviews", texts=["the film is superb"])),
    ("three texts, model omitted", JSON, body(texts=["superb", "dull and long", "é 🎬 ok"])),
    ("charset parameter", {**JSON, "content-type": "application/json; charset=utf-8"}, body(texts=["fine"])),
    ("+json media type", {**JSON, "content-type": "application/vnd.api+json"}, body(texts=["fine"])),
    ("Bearer key", {"content-type": "application/json", "authorization": "Bearer k"}, body(texts=["fine"])),
    ("no key", {"content-type": "application/json"}, body(texts=["fine"])),
    ("wrong key", {"content-type": "application/json", "x-api-key": "nope"}, body(texts=["fine"])),
    ("unknown model", JSON, body(model="nope", texts=["fine"])),
    ("translator named", JSON, body(model="numbers", texts=["one two"])),
    ("empty list", JSON, body(texts=[])),
    ("blank text", JSON, body(texts=["ok", "  \n"])),
    ("number for a text", JSON, body(texts=["ok", 3])),
    ("texts not a list", JSON, body(texts="ok")),
    ("missing texts", JSON, body(model="reviews")),
    ("extra field", JSON, body(texts=["ok"], beam_size=2)),
    ("too many texts", JSON, body(texts=["ok"] * 9)),
    ("text too long", JSON, body(texts=["x" * 201])),
    ("NUL in text", JSON, body(texts=["a\u0000b"])),
    ("lone surrogate", JSON, b'{"texts": ["\\ud800"]}'),
    ("malformed JSON", JSON, b'{"texts": ['),
    ("JSON null", JSON, b"null"),
    ("JSON array", JSON, b'["ok"]'),
    ("not UTF-8", JSON, b'{"texts": ["\xff\xfe"]}'),
    ("empty body", JSON, b""),
    ("no content type", KEY, body(texts=["ok"])),
    ("text/plain", {**KEY, "content-type": "text/plain"}, body(texts=["ok"])),
    ("form", {**KEY, "content-type": "application/x-www-form-urlencoded"}, b"texts=ok"),
    ("gzip", {**JSON, "content-encoding": "gzip"}, body(texts=["ok"])),
    ("body over the limit", JSON, body(texts=["ok " * 700])),
    ("timeout header", {**JSON, "x-timeout-ms": "5000"}, body(texts=["fine"])),
    ("bad timeout header", {**JSON, "x-timeout-ms": "soon"}, body(texts=["fine"])),
    ("given request id", {**JSON, "x-request-id": "abc-123"}, body(texts=["fine"])),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory, classifier_version, translator_version) -> Iterator[tuple[ThreadServer, ThreadServer,
                                                                                          list[str]]]:
    root = tmp_path_factory.mktemp("hotpath")
    shutil.copytree(classifier_version, root / "reviews" / "1")
    shutil.copytree(translator_version, root / "numbers" / "1")

    def settings() -> Settings:
        return Settings(model_repository=root, port=free_port(), api_key="k", max_texts_per_request=8,
                        max_chars_per_text=200, max_body_bytes=2048)

    hot, framework = ThreadServer(settings()), ThreadServer(settings())
    framework.app.hot_path = None  # type: ignore[attr-defined]
    assert hot.app.hot_path is not None  # type: ignore[attr-defined]
    taken: list[str] = []
    chain = hot.app.hot_path.chain  # type: ignore[attr-defined]

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        taken.append(scope["path"])
        await chain(scope, receive, send)

    hot.app.hot_path.chain = counting  # type: ignore[attr-defined]
    with hot, framework:
        yield hot, framework, taken


def answer(server: ThreadServer, headers: dict[str, str], content: bytes) -> tuple[Any, ...]:
    response = httpx.post(server.url + "/v1/classify", headers=headers, content=content, timeout=30)
    payload = response.json()
    request_id = payload.pop("request_id", None) if isinstance(payload, dict) else None
    assert response.headers["x-request-id"], "every answer carries a request id"
    if request_id is not None:
        assert request_id == response.headers["x-request-id"]
    return (response.status_code, response.headers["content-type"], response.headers.get("retry-after"), payload)


@pytest.mark.parametrize(("name", "headers", "content"), CASES, ids=[c[0] for c in CASES])
def test_hot_path_answers_as_the_framework_route(servers, name, headers, content):
    hot, framework, taken = servers
    before = len(taken)
    got, expected = answer(hot, headers, content), answer(framework, headers, content)
    assert len(taken) == before + 1, "the request did not take the hot path"
    assert got == expected
    assert got[0] < 500


def classify_counts(server: ThreadServer) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    pattern = r'seqserve_requests_total\{endpoint="/v1/classify",model="([^"]*)",status="(\d+)"\} (\S+)'
    return {f"{model}:{status}": float(n) for model, status, n in re.findall(pattern, text)}


def test_hot_path_metrics_match(servers):
    hot, framework, _ = servers
    for _, headers, content in CASES:  # independent of the order the parametrized cases ran in
        answer(hot, headers, content)
        answer(framework, headers, content)
    counts = classify_counts(hot)
    assert counts == classify_counts(framework)
    assert counts.get("reviews:200", 0) >= 1 and counts.get(":401", 0) >= 1
