"""The shortlist as a served model's option: on by default for a model that ships one, off per request
(`shortlist: false`, in v2 parameters too) and per model (`--no-shortlist`), and beam early stopping per request."""

from __future__ import annotations

import shutil

import httpx
import pytest

from service.engine.repository import read_config
from service.engine.translator import DecodeOptions, TranslatorRuntime
from tests.conftest import synthetic_pairs

TEXTS = [src for src, _ in synthetic_pairs(16, seed=77)]


def translate(url: str, model: str, **extra: object) -> list[dict]:
    response = httpx.post(f"{url}/v1/translate", json={"model": model, "texts": TEXTS, "beam_size": 3, **extra},
                          timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"]


@pytest.fixture
def served(repo, shortlisted_version):
    shutil.copytree(shortlisted_version, repo / "short" / "1")
    return repo


def offline(version, **options: object) -> list[str]:
    runtime = TranslatorRuntime(version, read_config(version))
    return [t.text for t in runtime.translate(TEXTS, DecodeOptions(beam_size=3, **options))]  # type: ignore[arg-type]


def test_a_shortlisted_model_uses_it_unless_the_request_or_the_settings_turn_it_off(make_server, served):
    version = served / "short" / "1"
    with_list, without = offline(version), offline(version, shortlist=False)
    server = make_server(response_cache_entries=0)
    assert server.manager.models["short"].runtime.use_shortlist
    assert [r["translation"] for r in translate(server.url, "short")] == with_list
    assert [r["translation"] for r in translate(server.url, "short", shortlist=False)] == without
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS)], "data": TEXTS}],
            "parameters": {"beam_size": 3, "shortlist": False}}
    v2 = httpx.post(f"{server.url}/v2/models/short/infer", json=body, timeout=60).json()
    assert next(o for o in v2["outputs"] if o["name"] == "translation")["data"] == without
    off = make_server(response_cache_entries=0, no_shortlist=["short"])
    assert not off.manager.models["short"].runtime.use_shortlist
    assert [r["translation"] for r in translate(off.url, "short")] == without
    # a model without a shortlist takes the option and decodes as ever
    assert [r["translation"] for r in translate(server.url, "numbers", shortlist=True)] == offline(
        served / "numbers" / "1")


def test_early_stopping_is_a_request_option(make_server, served):
    server = make_server(response_cache_entries=0)
    bound = translate(server.url, "numbers", early_stopping="bound")
    assert [r["translation"] for r in bound] == offline(served / "numbers" / "1", early_stopping="bound")
    beam = translate(server.url, "numbers", early_stopping="beam")
    assert [r["translation"] for r in beam] == offline(served / "numbers" / "1", early_stopping="beam")
    response = httpx.post(f"{server.url}/v1/translate", json={"model": "numbers", "texts": ["one"],
                                                                "early_stopping": "never"}, timeout=30)
    assert response.status_code == 422 and "early_stopping" in response.text
    response = httpx.post(f"{server.url}/v2/models/numbers/infer", json={
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["one"]}],
        "parameters": {"shortlist": "sometimes"}}, timeout=30)
    assert response.status_code in (400, 422) and "shortlist" in response.text
