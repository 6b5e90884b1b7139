"""JSON logs from a real `seqserve serve` process, and OpenTelemetry traces of batched requests (REST and gRPC) with
an in-process span exporter."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bench.server import free_port
from service import tracing
from service.settings import Settings
from tests.fixtures import ProcessServer, ThreadServer
from tests.service.api.test_api import NEGATIVE, POSITIVE
from tests.service.test_faults import held, wait_for

SECRET = "a secret sentence that must stay out of the logs"


def test_json_logs_one_object_a_line_with_request_fields_and_no_texts(repo: Path, tmp_path: Path):
    log_path = tmp_path / "server.log"
    server = ProcessServer(repo, log_path, log_format="json", access_log="true", grpc_port="0")
    try:
        ok = httpx.post(f"{server.url}/v1/classify", json={"texts": [SECRET]}, headers={"X-Request-ID": "log-1"})
        bad = httpx.post(f"{server.url}/v1/classify", json={"texts": [" "]}, headers={"X-Request-ID": "log-2"})
        missing = httpx.post(f"{server.url}/v1/translate", json={"texts": [SECRET], "model": "nope"})
        assert (ok.status_code, bad.status_code, missing.status_code) == (200, 422, 404)
    finally:
        assert server.stop() == 0
    text = log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len(lines) == len([line for line in text.splitlines() if line.strip()])  # every line is an object
    for line in lines:
        assert {"time", "level", "logger", "message", "request_id"} <= set(line)
    access = {line["request_id"]: line for line in lines if line["logger"] == "seqserve.access"}
    first = access["log-1"]
    assert first["model"] == "reviews" and first["version"] == "1" and first["status"] == 200
    assert first["endpoint"] == "/v1/classify" and first["latency_ms"] > 0 and first["level"] == "INFO"
    assert access["log-2"]["status"] == 422
    assert any(line["status"] == 404 for line in access.values())
    assert any("gRPC" in line["message"] for line in lines)  # the start-up lines are JSON too
    assert SECRET not in text


@pytest.fixture
def traced(repo: Path):  # type: ignore[no-untyped-def]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(model_repository=repo, port=free_port(), grpc_port=0)
    server = ThreadServer(settings, provider=provider).__enter__()
    try:
        yield server, exporter
    finally:
        server.__exit__()
        tracing.configure(None)


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def children(spans: list[ReadableSpan], parent: ReadableSpan, name: str) -> list[ReadableSpan]:
    return [s for s in by_name(spans, name)
            if s.parent is not None and s.parent.span_id == parent.context.span_id]


def test_a_batched_request_is_a_trace_of_parse_queue_batch_and_response(traced):
    server, exporter = traced
    model = server.manager.models["reviews"]
    entered, release = threading.Event(), threading.Event()
    held(model, entered, release)
    trace_id, parent_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
    client_parent = f"00-{trace_id:032x}-{parent_id:016x}-01"
    answers: list[httpx.Response] = []

    async def together() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            answers.extend(await asyncio.gather(*[
                client.post(f"{server.url}/v1/classify", json={"texts": [text]}, headers=headers)
                for text, headers in ((POSITIVE, {"X-Request-ID": "t-1", "traceparent": client_parent}),
                                      (NEGATIVE, {"X-Request-ID": "t-2"}), (POSITIVE, {"X-Request-ID": "t-3"}))]))

    warm = threading.Thread(target=httpx.post, args=(f"{server.url}/v1/classify",),
                            kwargs={"json": {"texts": ["first"]}, "timeout": 60, "headers": {"X-Request-ID": "t-0"}})
    warm.start()
    assert entered.wait(30)  # the first batch computes, held: the next three queue and share the next batch
    sender = threading.Thread(target=lambda: asyncio.run(together()))
    sender.start()
    wait_for(lambda: model.queue.depth == 3)
    release.set()
    warm.join()
    sender.join()
    assert [a.status_code for a in answers] == [200, 200, 200]
    spans = list(exporter.get_finished_spans())
    servers = {s.attributes["seqserve.request_id"]: s for s in spans if "seqserve.request_id" in s.attributes}
    assert set(servers) == {"t-0", "t-1", "t-2", "t-3"}
    for request_id, span in servers.items():
        assert span.attributes["seqserve.model"] == "reviews", request_id
        assert len(children(spans, span, "parse")) == 1 and len(children(spans, span, "response")) == 1
        assert len(children(spans, span, "queue")) == 1
    honoured = servers["t-1"]  # the client's traceparent: the same trace, under the client's span
    assert honoured.context.trace_id == trace_id and honoured.parent.span_id == parent_id
    assert servers["t-2"].context.trace_id != trace_id
    batches = by_name(spans, "batch")
    assert [b.attributes["seqserve.batch.size"] for b in batches] == [1, 3]
    shared = batches[1]
    linked = {link.context.span_id for link in shared.links}
    assert linked == {servers[r].context.span_id for r in ("t-1", "t-2", "t-3")}
    assert shared.parent.span_id in linked and shared.attributes["seqserve.batch.traced_requests"] == 3
    for request_id in ("t-1", "t-2", "t-3"):  # each request's queue wait links to the batch it joined
        (wait,) = children(spans, servers[request_id], "queue")
        assert [link.context.span_id for link in wait.links] == [shared.context.span_id]
        assert wait.end_time == shared.start_time and wait.start_time < wait.end_time


def test_decoding_and_grpc_requests_are_traced_too(traced):
    import tritonclient.grpc as tg

    server, exporter = traced
    translated = httpx.post(f"{server.url}/v1/translate", json={"texts": ["one two", "three"]},
                            headers={"X-Request-ID": "d-1"}, timeout=60)
    assert translated.status_code == 200
    client = tg.InferenceServerClient(f"127.0.0.1:{server.app.grpc_port}")
    tensor = tg.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([POSITIVE.encode()], dtype=np.object_))
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert client.infer("reviews", [tensor], headers={"traceparent": parent, "x-request-id": "g-1"}
                        ).as_numpy("label")[0] == b"pos"
    client.close()
    spans: list[Any] = list(exporter.get_finished_spans())
    rest = next(s for s in spans if s.attributes.get("seqserve.request_id") == "d-1")
    assert len(children(spans, rest, "queue")) == 2 and len(children(spans, rest, "decode")) == 2
    admits = [s for s in by_name(spans, "admit") if rest.context.span_id in {k.context.span_id for k in s.links}]
    assert admits and all(a.context.trace_id == rest.context.trace_id for a in admits)
    rpc = next(s for s in spans if s.attributes.get("seqserve.request_id") == "g-1")
    assert rpc.name == "inference.GRPCInferenceService/ModelInfer" and rpc.attributes["rpc.system"] == "grpc"
    assert rpc.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C and rpc.parent.span_id == 0xB7AD6B7169203331
    assert rpc.attributes["seqserve.model"] == "reviews"
    for name in ("parse", "queue", "response"):
        assert len(children(spans, rpc, name)) == 1, name
    (batch,) = [b for b in by_name(spans, "batch") if b.parent is not None
                and b.parent.span_id == rpc.context.span_id]
    assert [link.context.span_id for link in batch.links] == [rpc.context.span_id]


def test_tracing_is_off_without_an_endpoint(make_server, monkeypatch: pytest.MonkeyPatch):
    """Off, the service makes no span, not even through OpenTelemetry's global provider (set here to catch it)."""
    from opentelemetry import trace

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)  # the global provider, for this test only
    server = make_server(grpc_port=0)
    assert not tracing.enabled() and tracing.current() is None
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    for path, body in (("/v1/classify", {"texts": [POSITIVE]}), ("/v1/translate", {"texts": ["one two"]})):
        response = httpx.post(f"{server.url}{path}", json=body, headers={"traceparent": parent}, timeout=60)
        assert response.status_code == 200
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(f"127.0.0.1:{server.app.grpc_port}")
    tensor = tg.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([POSITIVE.encode()], dtype=np.object_))
    assert client.infer("reviews", [tensor], headers={"traceparent": parent}).as_numpy("label")[0] == b"pos"
    client.close()
    ours = {"parse", "queue", "batch", "admit", "decode", "response"}
    made = [s for s in exporter.get_finished_spans()  # FastAPI's own spans (fastapi.*) go to a global provider
            if s.instrumentation_scope.name == "seqserve" or s.name in ours or "seqserve.request_id" in s.attributes]
    assert made == []
