"""The bundled demo models, served as `make serve` serves them: known answers, and the same answers as the bare
engine on the same texts. (That answers do not depend on the batch: tests/service/test_batch_invariance.py.)"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from service.engine.classifier import ClassifierRuntime
from service.engine.lm import LMRuntime, SampleOptions
from service.engine.repository import read_config, resolve_version_dir
from service.engine.tagger import TaggerRuntime
from service.engine.translator import DecodeOptions, TranslatorRuntime
from tests.conftest import ROOT
from tests.fixtures import ProcessServer

REPOSITORY = ROOT / "model_repository"


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    server = ProcessServer(REPOSITORY, tmp_path_factory.mktemp("bundled") / "server.log")
    yield server
    assert server.stop() == 0


def test_the_bundled_models_serve_and_describe_themselves(bundled):
    assert httpx.get(f"{bundled.url}/v2/health/ready", timeout=10).status_code == 200
    models = (("sentiment", "classifier", "1"), ("en-de", "translator", "3"), ("atis", "tagger", "1"),
              ("captions-lm", "lm", "1"), ("zh-en", "translator", "1"))
    for name, kind, version in models:
        meta = httpx.get(f"{bundled.url}/v2/models/{name}", timeout=10).json()
        assert meta["parameters"]["kind"] == kind and meta["versions"] == [version]


def test_the_sentiment_model_knows_praise_from_scorn_and_matches_the_engine(bundled):
    texts = ["A gripping, beautifully acted film that stays with you.", "Dull, tedious and far too long.",
             "An utterly charming and moving story.", "A lifeless, clumsy mess of a movie."]
    answer = httpx.post(f"{bundled.url}/v1/classify", json={"model": "sentiment", "texts": texts}, timeout=30).json()
    assert [r["label"] for r in answer["results"]] == ["fresh", "rotten", "fresh", "rotten"]
    version = resolve_version_dir(REPOSITORY / "sentiment")
    runtime = ClassifierRuntime(version, read_config(version))
    for text, result in zip(texts, answer["results"], strict=True):
        (probs,) = runtime.predict([text])
        served = np.array([result["probabilities"][label] for label in runtime.labels])
        assert np.abs(served - probs).max() < 1e-6


def test_the_en_de_translator_translates_and_matches_the_engine(bundled):
    version = resolve_version_dir(REPOSITORY / "en-de")
    samples = [s["source"] for s in json.loads((version / "metrics.json").read_text())["test2016"]["samples"]]
    runtime = TranslatorRuntime(version, read_config(version))
    for text in ["Two dogs are playing in the snow.", *samples[:3]]:
        served = httpx.post(f"{bundled.url}/v1/translate", json={"model": "en-de", "texts": [text], "beam_size": 5},
                            timeout=60).json()["results"][0]
        (bare,) = runtime.translate([text], DecodeOptions(beam_size=5))
        assert served["translation"] == bare.text and served["score"] == pytest.approx(bare.score, abs=1e-5)
    body = {"model": "en-de", "texts": ["Two dogs are playing in the snow."]}
    snow = httpx.post(f"{bundled.url}/v1/translate", json=body, timeout=60).json()["results"][0]["translation"]
    assert "Hunde" in snow and "Schnee" in snow, snow


def test_the_atis_tagger_fills_slots_and_intents_and_matches_the_engine(bundled):
    texts = ["show me flights from boston to denver on monday morning",
             "what is the cheapest fare from Dallas to San Francisco?",
             "which airlines fly from pittsburgh to atlanta"]
    answer = httpx.post(f"{bundled.url}/v1/tag", json={"model": "atis", "texts": texts}, timeout=30).json()
    first, second, third = answer["results"]
    assert [(e["label"], e["text"]) for e in first["entities"]] == [
        ("fromloc.city_name", "boston"), ("toloc.city_name", "denver"), ("depart_date.day_name", "monday"),
        ("depart_time.period_of_day", "morning")]
    assert first["intent"]["label"] == "atis_flight"
    assert second["intent"]["label"] == "atis_airfare"
    assert ("cost_relative", "cheapest") in [(e["label"], e["text"]) for e in second["entities"]]
    assert third["intent"]["label"] == "atis_airline"
    version = resolve_version_dir(REPOSITORY / "atis")
    bare = TaggerRuntime(version, read_config(version)).tag_texts(texts)
    for served, engine in zip(answer["results"], bare, strict=True):
        assert [t["tag"] for t in served["tokens"]] == [t["tag"] for t in engine["tokens"]]
        assert [t["score"] for t in served["tokens"]] == pytest.approx([t["score"] for t in engine["tokens"]],
                                                                     abs=1e-6)
        assert served["intent"]["label"] == engine["intent"]["label"]


def test_the_captions_lm_suggests_words_scores_and_generates_like_the_engine(bundled):
    url = bundled.url
    body = {"model": "captions-lm", "texts": ["A man is ri", "Two dogs are playing in the sn", "A woman in a red "]}
    riding, snow, after_red = httpx.post(f"{url}/v1/complete", json=body, timeout=30).json()["results"]
    assert riding["suggestions"][0]["word"] == "riding" and snow["suggestions"][0]["word"] == "snow"
    assert {s["word"] for s in after_red["suggestions"]} & {"shirt", "dress", "jacket", "hat", "top"}
    fluent, garbled = httpx.post(f"{url}/v1/score", json={"model": "captions-lm", "texts": [
        "A man is riding a bike down the street.", "street the down bike a riding is man A."]},
        timeout=30).json()["results"]
    assert fluent["perplexity"] < 40 < garbled["perplexity"]
    version = resolve_version_dir(REPOSITORY / "captions-lm")
    runtime = LMRuntime(version, read_config(version))
    generated = httpx.post(f"{url}/v1/generate", json={"model": "captions-lm", "texts": ["A little girl"],
                                                      "max_tokens": 20, "seed": 3}, timeout=30).json()["results"][0]
    engine = runtime.generate(["A little girl"], SampleOptions(max_tokens=20, seed=3))[0]
    assert generated["token_ids"] == engine.token_ids
    assert [s["word"] for s in riding["suggestions"]] == [w for w, _ in runtime.complete(["A man is ri"])[0].words]
    metrics = json.loads((version / "metrics.json").read_text())
    assert metrics["test"]["perplexity"] <= 0.75 * metrics["test"]["reference"]["perplexity"]


def test_the_zh_en_translator_welcomes_you_to_beijing_in_either_script(bundled):
    version = resolve_version_dir(REPOSITORY / "zh-en")
    runtime = TranslatorRuntime(version, read_config(version))
    assert read_config(version)["scripts"] == {"source": "t2s"}

    def translate(texts, **options):
        body = {"model": "zh-en", "texts": texts, "beam_size": 5, **options}
        response = httpx.post(f"{bundled.url}/v1/translate", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["results"]

    simplified, traditional = translate(["欢迎来北京。", "歡迎來北京。"])
    assert simplified["translation"] == "Welcome to Beijing."
    assert traditional == simplified  # the model reads both scripts alike (OpenCC t2s before tokenizing)
    (bare,) = runtime.translate(["欢迎来北京。"], DecodeOptions(beam_size=5))
    assert bare.text == simplified["translation"] and bare.score == pytest.approx(simplified["score"], abs=1e-5)
    mixed = translate(["我們愛北京。", "我们爱北京。"])  # traditional and simplified mixed in one request
    assert mixed[0] == mixed[1]

    (paragraph,) = translate(["欢迎来北京。谢谢！"], num_hypotheses=2)
    sentences = translate(["欢迎来北京。", "谢谢！"])
    assert [s["source"] for s in paragraph["sentences"]] == ["欢迎来北京。", "谢谢！"]
    assert paragraph["translation"] == f"{sentences[0]['translation']} {sentences[1]['translation']}"
    assert len(paragraph["hypotheses"]) == 2
    metrics = json.loads((version / "metrics.json").read_text())["test"]
    assert metrics["examples"] == 1000 and metrics["bleu"] >= 20.0
    assert sum(f.stat().st_size for f in version.rglob("*") if f.is_file()) <= 6 * 2**20
