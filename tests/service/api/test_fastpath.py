"""POST /v1/classify and v2 infer are fast routes (service.api.fastpath) in front of the framework; their
answers must be the framework routes'.

Two real servers on the same repository, one with the fast routes and one with them off, get the same
requests; status, content type, Retry-After, JSON body (minus the request id) and the metrics must agree."""

from __future__ import annotations

import json
import re
import shutil
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench.server import free_port
from service.settings import Settings
from tests.fixtures import ThreadServer

KEY = {"x-api-key": "k"}
JSON = {"content-type": "application/json", **KEY}


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


CLASSIFY = "/v1/classify"
INFER = "/v2/models/reviews/infer"


def tensor(*texts: str, **parameters: Any) -> dict[str, Any]:
    return {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts),
            **({"parameters": parameters} if parameters else {})}


def binary_request(*texts: str) -> tuple[dict[str, str], bytes]:
    """Triton's binary tensor extension: a JSON header, then each text as a 4-byte length and its bytes."""
    blob = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
    header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)],
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return ({**KEY, "content-type": "application/octet-stream",
             "inference-header-content-length": str(len(header))}, header + blob)


V2_CASES: list[tuple[str, str, dict[str, str], bytes, bool]] = [
    ("v2 one text", INFER, JSON, body(inputs=[tensor("the film is superb")]), True),
    ("v2 with id and outputs", INFER, JSON, body(id="7", inputs=[tensor("superb", "dull")],
                                                 outputs=[{"name": "label"}]), True),
    ("v2 version 1", "/v2/models/reviews/versions/1/infer", JSON, body(inputs=[tensor("fine")]), True),
    ("v2 version not loaded", "/v2/models/reviews/versions/2/infer", JSON, body(inputs=[tensor("fine")]), True),
    ("v2 version 0", "/v2/models/reviews/versions/0/infer", JSON, body(inputs=[tensor("fine")]), False),
    ("v2 version not a number", "/v2/models/reviews/versions/one/infer", JSON, body(inputs=[tensor("x")]), False),
    ("v2 name over 64", f"/v2/models/{'r' * 65}/infer", JSON, body(inputs=[tensor("fine")]), False),
    ("v2 unknown model", "/v2/models/nope/infer", JSON, body(inputs=[tensor("fine")]), True),
    ("v2 translator", "/v2/models/numbers/infer", JSON, body(inputs=[tensor("one two")],
                                                             parameters={"beam_size": 1}), True),
    ("v2 unknown output", INFER, JSON, body(inputs=[tensor("fine")], outputs=[{"name": "nope"}]), True),
    ("v2 bad timeout", INFER, JSON, body(inputs=[tensor("fine")], parameters={"timeout": "soon"}), True),
    ("v2 wrong datatype", INFER, JSON, body(inputs=[{**tensor("fine"), "datatype": "FP32"}]), True),
    ("v2 missing inputs", INFER, JSON, body(id="1"), True),
    ("v2 malformed JSON", INFER, JSON, b'{"inputs": [', True),
    ("v2 text/plain", INFER, {**KEY, "content-type": "text/plain"}, body(inputs=[tensor("x")]), True),
    ("v2 no key", INFER, {"content-type": "application/json"}, body(inputs=[tensor("fine")]), True),
    ("v2 binary", INFER, *binary_request("superb", "é 🎬 dull"), True),
]

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


MIDDLEWARE_REFUSES = {"gzip", "body over the limit"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory, classifier_version, translator_version) -> Iterator[tuple[ThreadServer, ThreadServer,
                                                                                          list[str]]]:
    root = tmp_path_factory.mktemp("fastpath")
    shutil.copytree(classifier_version, root / "reviews" / "1")
    shutil.copytree(translator_version, root / "numbers" / "1")

    def settings() -> Settings:
        return Settings(model_repository=root, port=free_port(), api_key="k", max_texts_per_request=8,
                        max_chars_per_text=200, max_body_bytes=2048)

    hot, framework = ThreadServer(settings()), ThreadServer(settings(), fast_routes=False)
    assert hot.app.fast is not None and framework.app.fast is None
    taken: list[str] = []
    find = hot.app.fast.find

    def counting(path: str) -> Any:
        found = find(path)
        if found is not None:
            taken.append(path)
        return found

    hot.app.fast.find = counting  # type: ignore[method-assign]
    with hot, framework:
        yield hot, framework, taken


def answer(server: ThreadServer, headers: dict[str, str], content: bytes, path: str = CLASSIFY) -> tuple[Any, ...]:
    response = httpx.post(server.url + path, headers=headers, content=content, timeout=30)
    payload = response.json()
    request_id = payload.pop("request_id", None) if isinstance(payload, dict) else None
    assert response.headers["x-request-id"], "every answer carries a request id"
    if request_id is not None:
        assert request_id == response.headers["x-request-id"]
    return (response.status_code, response.headers["content-type"], response.headers.get("retry-after"), payload)


@pytest.mark.parametrize(("name", "headers", "content"), CASES, ids=[c[0] for c in CASES])
def test_fast_route_answers_as_the_framework_route(servers, name, headers, content):
    hot, framework, taken = servers
    before = len(taken)
    got, expected = answer(hot, headers, content), answer(framework, headers, content)
    # The service middleware, outside the dispatcher, refuses compressed and oversized bodies before any routing.
    routed = name not in MIDDLEWARE_REFUSES
    assert len(taken) == before + routed, "the request did not take the fast route"
    assert got == expected
    assert got[0] < 500


@pytest.mark.parametrize(("name", "path", "headers", "content", "hot"), V2_CASES, ids=[c[0] for c in V2_CASES])
def test_fast_route_v2_infer_answers_as_the_framework_route(servers, name, path, headers, content, hot):
    hot_server, framework, taken = servers
    before = len(taken)
    got, expected = answer(hot_server, headers, content, path), answer(framework, headers, content, path)
    assert len(taken) == before + hot, "hot path taken" if not hot else "the request did not take the fast route"
    assert got == expected
    assert got[0] < 500


def request_counts(server: ThreadServer) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    pattern = r'seqserve_requests_total\{endpoint="([^"]*)",model="([^"]*)",status="(\d+)"\} (\S+)'
    return {f"{endpoint} {model}:{status}": float(n) for endpoint, model, status, n in re.findall(pattern, text)}


def test_fast_route_metrics_match(servers):
    hot, framework, _ = servers
    requests = [(CLASSIFY, headers, content) for _, headers, content in CASES]
    requests += [(path, headers, content) for _, path, headers, content, _ in V2_CASES]
    for path, headers, content in requests:  # independent of the order the parametrized cases ran in
        answer(hot, headers, content, path)
        answer(framework, headers, content, path)
    counts = request_counts(hot)
    assert counts == request_counts(framework)
    assert counts.get("/v1/classify reviews:200", 0) >= 1 and counts.get("/v1/classify :401", 0) >= 1
    assert counts.get("/v2/models/{name}/infer reviews:200", 0) >= 1
    assert counts.get("/v2/models/{name}/versions/{number}/infer reviews:200", 0) >= 1
