"""API keys, model control gating, CORS, what the logs contain, request ids, and broken models at start-up."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest

from service.engine.repository import valid_name
from service.errors import UserError
from service.settings import load_settings
from tests.fixtures import ProcessServer
from tests.service.api.test_api import POSITIVE

CLASSIFY = {"model": "reviews", "texts": [POSITIVE]}


def test_inference_and_control_keys_are_separate(make_server):
    server = make_server(api_key="infer-secret", control_api_key="control-secret")
    url = server.url
    assert httpx.post(f"{url}/v1/classify", json=CLASSIFY).status_code == 401
    assert httpx.post(f"{url}/v1/classify", json=CLASSIFY, headers={"X-API-Key": "wrong"}).status_code == 401
    ok = httpx.post(f"{url}/v1/classify", json=CLASSIFY, headers={"Authorization": "Bearer infer-secret"})
    assert ok.status_code == 200
    v2 = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    assert httpx.post(f"{url}/v2/models/reviews/infer", json=v2).status_code == 401
    assert httpx.post(f"{url}/v2/models/reviews/infer", json=v2, headers={"X-API-Key": "infer-secret"}).is_success
    # the inference key does not open model control, and the control key does not open inference
    assert httpx.post(f"{url}/v2/repository/index", headers={"X-API-Key": "infer-secret"}).status_code == 401
    assert httpx.post(f"{url}/v2/repository/index", headers={"X-API-Key": "control-secret"}).status_code == 200
    assert httpx.post(f"{url}/v1/classify", json=CLASSIFY, headers={"X-API-Key": "control-secret"}).status_code == 401
    # health and metadata stay open for probes
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200


def test_model_control_is_off_unless_a_key_or_the_setting_enables_it(make_server):
    off = make_server()
    for path in ("/v2/repository/index", "/v2/repository/models/reviews/load", "/v2/repository/models/reviews/unload"):
        response = httpx.post(off.url + path)
        assert response.status_code == 403 and "disabled" in response.json()["error"]
    on = make_server(enable_model_control=True)
    assert httpx.post(f"{on.url}/v2/repository/index").status_code == 200


def test_cors_is_off_by_default_and_follows_the_setting(make_server):
    preflight = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    off = make_server()
    assert "access-control-allow-origin" not in httpx.options(f"{off.url}/v1/classify", headers=preflight).headers
    on = make_server(cors_origins=["https://example.org"])
    response = httpx.options(f"{on.url}/v1/classify", headers=preflight)
    assert response.headers["access-control-allow-origin"] == "https://example.org"


@pytest.mark.parametrize("name", ["../x", "..", ".hidden", "a/b", "a\\b", "%2e%2e", "", "x" * 65, "nul\x00"])
def test_model_names_that_could_escape_the_repository_are_invalid(name):
    assert not valid_name(name)


def test_the_service_never_loads_pickle_or_torch():
    source = "\n".join(p.read_text() for p in Path("service").rglob("*.py"))
    assert not re.search(r"^\s*(import|from)\s+(torch|pickle|joblib|dill)\b", source, re.M)
    assert "torch.load" not in source and "pickle.load" not in source


def test_bad_settings_name_the_setting():
    with pytest.raises(UserError, match=r"invalid setting max_batch_size \(SEQSERVE_MAX_BATCH_SIZE\)"):
        load_settings(max_batch_size=0)
    with pytest.raises(UserError, match="invalid setting scheduler"):
        load_settings(scheduler="fastest")


def test_logs_carry_request_ids_but_not_texts_unless_asked(repo, tmp_path):
    marker = "zebra-marker-text"
    for log_texts in ("false", "true"):
        log_path = tmp_path / f"server-{log_texts}.log"
        server = ProcessServer(repo, log_path, log_level="debug", log_texts=log_texts)
        try:
            response = httpx.post(f"{server.url}/v1/classify", json={"model": "reviews", "texts": [marker]},
                                  headers={"X-Request-ID": f"req-{log_texts}"})
            assert response.headers["x-request-id"] == f"req-{log_texts}"
            generated = httpx.post(f"{server.url}/v1/classify", json=CLASSIFY).headers["x-request-id"]
        finally:
            assert server.stop() == 0
        log = log_path.read_text()
        assert (marker in log) == (log_texts == "true")
        assert re.search(rf"\[req-{log_texts}\] .*POST /v1/classify 200", log)
        assert f"[{generated}]" in log


def test_a_corrupt_or_missing_model_file_fails_that_model_only(repo, make_server):
    shutil.copytree(repo / "reviews" / "1", repo / "broken" / "1")
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    shutil.copytree(repo / "reviews" / "1", repo / "incomplete" / "1")
    (repo / "incomplete" / "1" / "tokenizer.json").unlink()
    server = make_server(enable_model_control=True)
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert httpx.post(f"{server.url}/v1/classify", json=CLASSIFY).status_code == 200
    index = {m["name"]: m for m in httpx.post(f"{server.url}/v2/repository/index").json()}
    assert index["reviews"]["state"] == "READY"
    for name in ("broken", "incomplete"):
        assert index[name]["state"] == "UNAVAILABLE" and index[name]["reason"]
    assert "missing tokenizer.json" in index["incomplete"]["reason"]
    assert "INVALID_PROTOBUF" in index["broken"]["reason"]
    for name in ("broken", "incomplete"):
        response = httpx.post(f"{server.url}/v1/classify", json={"model": name, "texts": ["x"]})
        assert response.status_code == 503 and "not ready" in response.json()["error"]
        assert str(repo) not in response.json()["error"]  # no server paths in client messages
        assert httpx.get(f"{server.url}/v2/models/{name}/ready").status_code == 503
