"""Hostile bytes on every endpoint (issue 13): a client's mistake is a 4xx with a message and no traceback, on the
fast routes and the framework routes alike; the service keeps serving."""

from __future__ import annotations

import json
import logging
import shutil
import socket
from collections.abc import Iterator

import httpx
import pytest

from bench.server import free_port
from service.protocol import HEAD_SLACK
from service.settings import Settings
from tests.fixtures import ThreadServer
from tests.service.api.test_api import metric
from tests.service.api.test_bad_input import ENDPOINTS, expect, request_for, send

KEY = {"x-api-key": "k"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, classifier_version, translator_version) -> Iterator[ThreadServer]:
    root = tmp_path_factory.mktemp("hostile")
    shutil.copytree(classifier_version, root / "reviews" / "1")
    shutil.copytree(translator_version, root / "numbers" / "1")
    settings = Settings(model_repository=root, port=free_port(), api_key="k", control_api_key="c",
                        max_body_bytes=64 * 1024)
    with ThreadServer(settings) as running:
        yield running


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The case must not log an error: a client's mistake is not ours."""
    caplog.set_level(logging.ERROR)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def check_still_serving_with_key(server: ThreadServer, endpoint: str) -> None:
    path, body = request_for(endpoint, ["one two"])
    response = post(server, path, json.dumps(body).encode())
    assert response.status_code == 200, response.text[:300]


def post(server: ThreadServer, path: str, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return send(server, path, content=content, headers={"content-type": "application/json", **KEY, **(headers or {})})


def body_bytes(endpoint: str) -> bytes:
    return json.dumps(request_for(endpoint, ["one two"])[1]).encode()


NESTED = [
    ("100,000 open brackets", b"[" * 100_000),
    ("valid JSON 5,000 levels deep", b"[" * 5_000 + b"]" * 5_000),
    ("an object 5,000 levels deep", b'{"a":' * 5_000 + b"1" + b"}" * 5_000),
    ("a 5,000-digit integer", b'{"texts": ["x"], "n": ' + b"9" * 5_000 + b"}"),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("name", "raw"), NESTED, ids=[c[0] for c in NESTED])
def test_deep_or_huge_json_is_a_client_error(server, no_tracebacks, endpoint, name, raw):
    path, _ = request_for(endpoint, ["x"])
    response = post(server, path, raw)
    assert 400 <= response.status_code < 500, response.text[:300]
    assert response.json()["error"]


@pytest.mark.parametrize("where", ["parameters", "input parameters", "shape"])
def test_v2_deep_values_and_huge_integers_are_client_errors(server, no_tracebacks, where):
    path, body = request_for("v2-classifier", ["fine"])
    raw = json.dumps(body)
    if where == "parameters":
        raw = raw[:-1] + ', "parameters": {"x": ' + "[" * 3_000 + "1" + "]" * 3_000 + "}}"
    elif where == "input parameters":
        raw = raw.replace('"shape": [1]', '"shape": [1], "parameters": {"x": ' + '{"a": ' * 3_000 + "1" + "}" * 3_001)
    else:
        raw = raw.replace('"shape": [1]', '"shape": [' + "7" * 5_000 + "]")
    response = post(server, path, raw.encode())
    assert 400 <= response.status_code < 500, response.text[:300]
    assert response.json()["error"]
    check_still_serving_with_key(server, "v2-classifier")


@pytest.mark.parametrize(("timeout", "status", "message"), [
    ("1" + "0" * 400, 422, "timeout"), ("1e400", 422, "timeout"), ("NaN", 400, "NaN is not a JSON value"),
    ("-Infinity", 400, "Infinity is not a JSON value"), ("-1", 422, "timeout"), ("0", 422, "timeout"),
    ('"soon"', 422, "timeout")])
def test_v2_timeouts_must_be_positive_numbers(server, no_tracebacks, timeout, status, message):
    path, body = request_for("v2-classifier", ["fine"])
    raw = json.dumps(body)[:-1] + f', "parameters": {{"timeout": {timeout}}}}}'
    expect(post(server, path, raw.encode()), status, message)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("value", ["nan", "NaN", "-5", "0", "soon", "inf1"])
def test_x_timeout_ms_must_be_a_positive_number(server, no_tracebacks, endpoint, value):
    path, _ = request_for(endpoint, ["x"])
    expect(post(server, path, body_bytes(endpoint), {"x-timeout-ms": value}), 422, "")


@pytest.mark.parametrize("length", ["²", "١٢", "-1", "1e3", "0x10", "99999999"])
def test_non_ascii_or_odd_byte_counts_are_refused(server, no_tracebacks, length):
    path, body = request_for("v2-classifier", ["fine"])
    headers = {"content-type": "application/json", **KEY, "inference-header-content-length": length.encode()}
    response = send(server, path, content=json.dumps(body).encode(), headers=headers)
    expect(response, 422, "Inference-Header-Content-Length")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("length", ["²", "١٢"])
def test_content_length_in_other_digits_is_not_a_server_error(server, no_tracebacks, endpoint, length):
    """A Content-Length in non-ASCII digits: the HTTP parser or the service refuses it with a 4xx."""
    path, _ = request_for(endpoint, ["x"])
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: k\r\n"
                     f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode())
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.split()[1].startswith(b"4"), status_line


@pytest.mark.parametrize("body", [b'{"parameters": "x"}', b"1", b"[1]", b"true", b"{]",
                                  b'{"parameters": {"version": "\xc2\xb2"}}', b'{"parameters": {"version": true}}',
                                  b'{"parameters": {"version": 0}}'])
def test_model_control_bodies_are_client_errors(server, no_tracebacks, body):
    response = send(server, "/v2/repository/models/reviews/load", content=body,
                    headers={"content-type": "application/json", "x-api-key": "c"})
    assert response.status_code in (400, 422), response.text
    assert response.json()["error"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-32-be", "utf-8-sig"])
def test_bodies_that_are_not_utf8_are_refused_alike_on_every_endpoint(server, no_tracebacks, endpoint, encoding):
    path, _ = request_for(endpoint, ["x"])
    raw = body_bytes(endpoint).decode().encode(encoding)
    expect(post(server, path, raw), 400, "UTF-8")


@pytest.mark.parametrize("endpoint", [*ENDPOINTS, "load"])
def test_the_key_is_checked_before_the_body_is_read(server, no_tracebacks, endpoint):
    path = "/v2/repository/models/reviews/load" if endpoint == "load" else request_for(endpoint, ["x"])[0]
    response = send(server, path, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 401, response.text


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_oversized_chunked_bodies_get_413(server, no_tracebacks, endpoint):
    path, _ = request_for(endpoint, ["x"])

    def chunks() -> Iterator[bytes]:
        yield b'{"texts": ["'
        for _ in range(100):
            yield b"a" * 1024  # no Content-Length: 100 kB against a 64 kB limit
        yield b'"]}'

    response = httpx.post(server.url + path, content=chunks(), headers={"content-type": "application/json", **KEY},
                          timeout=30)
    expect(response, 413, "max_body_bytes")


def test_v2_outputs_must_be_known_and_listed_once(server, no_tracebacks):
    path, body = request_for("v2-classifier", ["fine"])
    expect(post(server, path, json.dumps({**body, "outputs": [{"name": "probabilities"}] * 2}).encode()), 422,
           "more than once")
    expect(post(server, path, json.dumps({**body, "outputs": [{"name": "nope"}]}).encode()), 422, "unknown output")
    ok = post(server, path, json.dumps({**body, "outputs": [{"name": "probabilities"}, {"name": "label"}]}).encode())
    assert ok.status_code == 200 and [o["name"] for o in ok.json()["outputs"]] == ["probabilities", "label"]


def connect(server: ThreadServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=30)


def raw_request(server: ThreadServer, path: str, body: bytes, headers: dict[str, str]) -> socket.socket:
    """A connection that has sent the request line, the headers and `body` (perhaps only part of it)."""
    sock = connect(server)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode() + body)
    return sock


def read_status(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    length = lengths[0] if lengths else 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(head.split()[1]), rest


def requests_with_status(server: ThreadServer, endpoint: str, status: str) -> float:
    scrape = httpx.get(server.url + "/metrics", timeout=10).text
    total = 0.0
    for line in scrape.splitlines():
        labels = f'endpoint="{endpoint}"', f'status="{status}"'
        if line.startswith("seqserve_requests_total{") and all(label in line for label in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


ROUTES = {"classify": "/v1/classify", "translate": "/v1/translate", "stream": "/v1/translate/stream",
          "v2-classifier": "/v2/models/{name}/infer", "v2-translator": "/v2/models/{name}/infer"}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_client_that_leaves_while_sending_its_body_is_counted_499_and_not_logged_as_an_error(
        server, no_tracebacks, endpoint):
    path, _ = request_for(endpoint, ["x"])
    before = requests_with_status(server, ROUTES[endpoint], "499")
    body = body_bytes(endpoint)
    sock = raw_request(server, path, body[:10], {"Content-Type": "application/json", "X-API-Key": "k",
                                                 "Content-Length": str(len(body))})
    httpx.get(server.url + "/v2/health/live", timeout=10)  # the loop has started the request by now
    sock.close()
    for _ in range(300):  # the server sees the disconnect on its next read: wait for the count, bounded
        if requests_with_status(server, ROUTES[endpoint], "499") > before:
            break
        httpx.get(server.url + "/v2/health/live", timeout=10)
    assert requests_with_status(server, ROUTES[endpoint], "499") == before + 1
    assert requests_with_status(server, ROUTES[endpoint], "500") == 0


@pytest.mark.parametrize("action", ["load", "unload"])
def test_a_v2_body_still_arriving_during_a_swap_is_answered_after_it(make_server, action):
    """v2 infer finds its model once the body is in, as /v1 does: a reload loses nothing, an unload is a 404."""
    server = make_server(enable_model_control=True)
    path, body = request_for("v2-classifier", ["the film is superb"])
    raw = json.dumps(body).encode()
    sock = raw_request(server, path, raw[:20], {"Content-Type": "application/json", "Content-Length": str(len(raw))})
    httpx.get(server.url + "/v2/health/live", timeout=10)  # the request's handler is waiting for its body
    assert httpx.post(f"{server.url}/v2/repository/models/reviews/{action}", timeout=60).status_code == 200
    sock.sendall(raw[20:])
    status, answer = read_status(sock)
    sock.close()
    if action == "load":
        assert status == 200, answer
        assert json.loads(answer)["outputs"][0]["data"] == ["pos"]
    else:
        assert status == 404 and b"unknown model" in answer, answer


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("name", "extra", "message"), [
    ("101 headers", {f"x-h{i}": "1" for i in range(101)}, "max_headers=100"),
    ("a 17 kB header", {"x-big": "a" * 17_000}, "max_header_bytes=16384"),
])
def test_too_many_or_too_large_headers_get_431(server, no_tracebacks, endpoint, name, extra, message):
    path, _ = request_for(endpoint, ["x"])
    expect(post(server, path, body_bytes(endpoint), extra), 431, message)
    assert httpx.get(server.url + "/v2/health/live", timeout=10).status_code == 200


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_body_that_never_arrives_in_full_gets_408(make_server, endpoint):
    server = make_server(body_timeout_s=0.5)
    path, _ = request_for(endpoint, ["x"])
    body = body_bytes(endpoint)
    sock = raw_request(server, path, body[:10], {"Content-Type": "application/json", "Content-Length": str(len(body))})
    status, answer = read_status(sock)  # the rest never comes: the server answers when the bound has passed
    sock.close()
    assert status == 408 and b"body_timeout_s=0.5" in answer, answer
    assert requests_with_status(server, ROUTES[endpoint], "408") == 1
    good = send(server, path, json=request_for(endpoint, ["one two"])[1])
    assert good.status_code == 200, good.text[:300]


def refusals(server: ThreadServer, reason: str) -> float:
    return metric(httpx.get(server.url + "/metrics", timeout=10).text, "seqserve_connection_refusals_total",
                  reason=reason)


def test_half_sent_headers_get_408_and_a_silent_connection_is_closed(make_server):
    """Read by the HTTP protocol itself (service/protocol.py): headers must be complete within header_timeout_s
    of their first byte; a connection that never begins a request is closed after idle_timeout_s."""
    server = make_server(header_timeout_s=0.5, idle_timeout_s=0.5)
    half = connect(server)
    half.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")  # and no more
    status, answer = read_status(half)
    half.close()
    assert status == 408 and json.loads(answer) == {"error": "request headers not complete within 0.5 s"}
    assert refusals(server, "head_timeout") == 1
    silent = connect(server)
    assert silent.recv(1024) == b""  # closed by the server, without an answer to a request never made
    silent.close()
    kept = connect(server)  # a connection in use is not cut: its next request comes within the idle time
    for _ in range(2):
        kept.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_status(kept)[0] == 200
    kept.close()
    good = send(server, "/v1/classify", json={"texts": ["one two"]})
    assert good.status_code == 200, good.text[:300]


@pytest.mark.parametrize("shape", ["one 8 MiB header", "100,000 headers"])
def test_a_huge_request_head_is_refused_as_it_arrives(server, no_tracebacks, shape):
    """431 once the head passes max_header_bytes plus room for the request line: the rest is never read."""
    if shape == "one 8 MiB header":
        head = b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (8 << 20)
    else:
        head = b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"x-h%d: 1\r\n" % i
                                                                             for i in range(100_000))
    limit = Settings().max_header_bytes + HEAD_SLACK  # the module server's limit on a head
    before = refusals(server, "head_too_large")
    sock = connect(server)
    sock.sendall(head[:limit + 1])  # the refusal comes once these bytes are read, with none left unread
    status, answer = read_status(sock)
    assert status == 431 and b"request head exceeds" in answer, answer
    assert sock.recv(1024) == b""  # the server closed the connection after its answer
    with pytest.raises(OSError):  # so the other megabytes go nowhere: writing soon meets the reset
        for start in range(limit + 1, len(head), 1 << 16):
            sock.sendall(head[start:start + (1 << 16)])
        for _ in range(1000):  # the loopback may take what is left into its buffers before the reset comes
            sock.sendall(b"x" * (1 << 16))
    sock.close()
    assert httpx.get(server.url + "/v2/health/live", timeout=10).status_code == 200
    assert refusals(server, "head_too_large") == before + 1


def test_connections_without_a_place_get_503_even_with_a_body_that_never_ends(make_server):
    """max_connections=1: the connection holding the place is served; a request on another gets 503 with
    Retry-After and its connection closed, once its body is in or header_timeout_s has passed."""
    server = make_server(max_connections=1, header_timeout_s=0.5, retry_after_s=4)
    health = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for _ in range(50):  # the place may still be held by a connection the readiness check has just closed
        holder = connect(server)
        holder.sendall(health)
        if read_status(holder)[0] == 200:
            break
        holder.close()
    else:
        pytest.fail("no connection ever got the place")
    other = connect(server)
    other.sendall(health)
    status, answer = read_status(other)
    assert status == 503 and b"max_connections=1" in answer
    assert other.recv(1024) == b""  # closed after the answer
    other.close()
    trickle = connect(server)
    trickle.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{\"texts\"")  # and the rest never comes
    status, answer = read_status(trickle)
    assert status == 503 and b"max_connections=1" in answer
    trickle.close()
    holder.sendall(health)  # the place is kept by its holder
    assert read_status(holder)[0] == 200
    holder.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, scrape = read_status(holder)
    assert status == 200 and metric(scrape.decode(), "seqserve_connection_refusals_total",
                                    reason="no_connection_place") == 2
    holder.close()
