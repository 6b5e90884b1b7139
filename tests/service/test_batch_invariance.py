"""A text gets the same answer alone, inside a request with other texts, batched by the server with other requests,
and (translation) streamed while other rows join and leave the decoder batch: for the bundled models and the tiny
ones, float and int8, over real HTTP against `seqserve serve`.

Tokens and labels must be identical. Scores may differ only in float rounding (1e-5): float kernels add in a
different order for another batch width. int8 activation scales that followed the batch moved scores by about 1e-2
and changed words."""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from service.engine.repository import read_config, resolve_version_dir
from tests.conftest import ROOT
from tests.fixtures import ProcessServer
from training.evaluate import load_eval_data
from training.kinds import TOOLS
from training.quantize import quantize_version

BUNDLED = ROOT / "model_repository"
TOLERANCE = 1e-5
CLASSIFIERS = ("sentiment", "sentiment-int8", "reviews", "reviews-int8")
TRANSLATORS = ("en-de", "zh-en", "numbers", "numbers-int8")
TAGGERS = ("atis", "flights", "flights-int8")
LMS = ("captions-lm", "animals")


def held_out_texts(version: Path, count: int, seed: int) -> list[str]:
    """Texts of the model's own held-out split, of mixed lengths."""
    config = read_config(version)
    examples = load_eval_data(config, SimpleNamespace(data=None, split="test"))  # Multi30k's test is test2016
    texts = sorted({TOOLS[config["kind"]].input_text(e) for e in examples})
    return random.Random(seed).sample(texts, count)


@pytest.fixture(scope="module")
def served(tmp_path_factory, classifier_version, translator_version, tagger_version, lm_version):
    """The bundled models as they ship (sentiment and atis fp32, en-de and zh-en int8), sentiment quantized here,
    and the tiny models in fp32 and int8."""
    root = tmp_path_factory.mktemp("invariance")
    repo = root / "repo"
    shutil.copytree(resolve_version_dir(BUNDLED / "sentiment"), repo / "sentiment" / "1")
    shutil.copytree(resolve_version_dir(BUNDLED / "en-de"), repo / "en-de" / "1")
    shutil.copytree(resolve_version_dir(BUNDLED / "zh-en"), repo / "zh-en" / "1")
    shutil.copytree(resolve_version_dir(BUNDLED / "atis"), repo / "atis" / "1")
    shutil.copytree(resolve_version_dir(BUNDLED / "captions-lm"), repo / "captions-lm" / "1")
    shutil.copytree(lm_version, repo / "animals" / "1")
    shutil.copytree(classifier_version, repo / "reviews" / "1")
    shutil.copytree(translator_version, repo / "numbers" / "1")
    shutil.copytree(tagger_version, repo / "flights" / "1")
    for name in ("sentiment", "reviews", "numbers", "flights"):
        quantize_version(repo / name / "1", version=1, out=repo / f"{name}-int8", calibration_size=128)
    texts = {name: held_out_texts(repo / name / "1", 32, seed=len(name))
             for name in (*CLASSIFIERS, *TRANSLATORS, *TAGGERS, *LMS)}
    # no response cache: every text is computed each time, alone and in every batch it is sent in
    server = ProcessServer(repo, root / "server.log", max_queue_delay_ms="20", response_cache_entries="0")
    yield server, texts
    assert server.stop() == 0


def random_batches(texts: list[str], rng: random.Random) -> list[list[str]]:
    order = texts[:]
    rng.shuffle(order)
    batches = []
    while order:
        size = rng.randint(2, 12)
        batches.append(order[:size])
        order = order[size:]
    return batches


async def post_all(url: str, bodies: list[dict]) -> list[dict]:
    """Every body at once, so the server batches them together."""
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=len(bodies))) as client:
        responses = await asyncio.gather(*[client.post(url, json=body) for body in bodies])
    for r in responses:
        assert r.status_code == 200, r.text
    return [r.json() for r in responses]


def same_classification(alone: dict, other: dict) -> None:
    assert other["label"] == alone["label"]
    for label, p in alone["probabilities"].items():
        assert other["probabilities"][label] == pytest.approx(p, abs=TOLERANCE)


def same_tagging(alone: dict, other: dict) -> None:
    assert [(t["text"], t["tag"]) for t in other["tokens"]] == [(t["text"], t["tag"]) for t in alone["tokens"]]
    assert [t["score"] for t in other["tokens"]] == pytest.approx([t["score"] for t in alone["tokens"]],
                                                                 abs=TOLERANCE)
    assert [(e["label"], e["start"], e["end"]) for e in other["entities"]] == [
        (e["label"], e["start"], e["end"]) for e in alone["entities"]]
    if "intent" in alone:
        assert other["intent"]["label"] == alone["intent"]["label"]
        for label, p in alone["intent"]["probabilities"].items():
            assert other["intent"]["probabilities"][label] == pytest.approx(p, abs=TOLERANCE)


def same_translation(alone: dict, other: dict) -> None:
    assert other["translation"] == alone["translation"]
    assert other["score"] == pytest.approx(alone["score"], abs=TOLERANCE)


def same_lm_answer(alone: dict, other: dict) -> None:
    if "token_ids" in alone:  # a seeded generation: the same tokens
        assert other["token_ids"] == alone["token_ids"]
        assert other["log_probs"] == pytest.approx(alone["log_probs"], abs=1e-4)
    elif "suggestions" in alone:
        assert [s["word"] for s in other["suggestions"]] == [s["word"] for s in alone["suggestions"]]
        assert [s["probability"] for s in other["suggestions"]] == pytest.approx(
            [s["probability"] for s in alone["suggestions"]], rel=1e-4)
    else:
        assert other["tokens"] == alone["tokens"]
        assert other["log_probs"] == pytest.approx(alone["log_probs"], abs=1e-4)


@pytest.mark.parametrize("path", ["/v1/score", "/v1/complete", "/v1/generate"])
@pytest.mark.parametrize("model", LMS)
def test_a_language_models_answer_does_not_depend_on_its_batch(served, model, path):
    """Scores, completions and seeded samples alone, in one request with others, and one request each at once (the
    scheduler admitting and retiring them at every iteration)."""
    server, texts = served
    url = f"{server.url}{path}"
    options = {"/v1/complete": {"k": 3}, "/v1/generate": {"max_tokens": 12, "seed": 5, "temperature": 0.9}}
    prompts = [t[: max(1, len(t) // 2)] for t in texts[model][:16]]  # prefixes, many ending inside a word
    alone = {}
    for text in prompts:
        response = httpx.post(url, json={"model": model, "texts": [text], **options.get(path, {})}, timeout=60)
        assert response.status_code == 200, response.text
        alone[text] = response.json()["results"][0]
    for batch in random_batches(prompts, random.Random(f"{model}{path}")):
        results = httpx.post(url, json={"model": model, "texts": batch, **options.get(path, {})},
                             timeout=60).json()["results"]
        for text, result in zip(batch, results, strict=True):
            same_lm_answer(alone[text], result)
    answers = asyncio.run(post_all(url, [{"model": model, "texts": [t], **options.get(path, {})} for t in prompts]))
    for text, answer in zip(prompts, answers, strict=True):
        same_lm_answer(alone[text], answer["results"][0])


@pytest.mark.parametrize("model", CLASSIFIERS)
def test_a_classification_does_not_depend_on_its_batch(served, model):
    server, texts = served
    url = f"{server.url}/v1/classify"
    alone = {}
    for text in texts[model]:
        response = httpx.post(url, json={"model": model, "texts": [text]}, timeout=60)
        assert response.status_code == 200, response.text
        alone[text] = response.json()["results"][0]
    for batch in random_batches(texts[model], random.Random(model)):  # one request, several texts
        results = httpx.post(url, json={"model": model, "texts": batch}, timeout=60).json()["results"]
        for text, result in zip(batch, results, strict=True):
            same_classification(alone[text], result)
    answers = asyncio.run(post_all(url, [{"model": model, "texts": [t]} for t in texts[model]]))  # server batches
    for text, answer in zip(texts[model], answers, strict=True):
        same_classification(alone[text], answer["results"][0])


@pytest.mark.parametrize("model", TAGGERS)
def test_a_tagging_does_not_depend_on_its_batch(served, model):
    server, texts = served
    url = f"{server.url}/v1/tag"
    alone = {}
    for text in texts[model]:
        response = httpx.post(url, json={"model": model, "texts": [text]}, timeout=60)
        assert response.status_code == 200, response.text
        alone[text] = response.json()["results"][0]
    for batch in random_batches(texts[model], random.Random(model)):
        results = httpx.post(url, json={"model": model, "texts": batch}, timeout=60).json()["results"]
        for text, result in zip(batch, results, strict=True):
            same_tagging(alone[text], result)
    answers = asyncio.run(post_all(url, [{"model": model, "texts": [t]} for t in texts[model]]))
    for text, answer in zip(texts[model], answers, strict=True):
        same_tagging(alone[text], answer["results"][0])


@pytest.mark.parametrize("beam_size", [1, 4])
@pytest.mark.parametrize("model", TRANSLATORS)
def test_a_translation_does_not_depend_on_its_batch(served, model, beam_size):
    server, texts = served
    url = f"{server.url}/v1/translate"
    sources = texts[model][:20]
    alone = {}
    for text in sources:
        response = httpx.post(url, json={"model": model, "texts": [text], "beam_size": beam_size}, timeout=60)
        assert response.status_code == 200, response.text
        alone[text] = response.json()["results"][0]
    for batch in random_batches(sources, random.Random(f"{model}{beam_size}")):
        body = {"model": model, "texts": batch, "beam_size": beam_size}
        results = httpx.post(url, json=body, timeout=120).json()["results"]
        for text, result in zip(batch, results, strict=True):
            same_translation(alone[text], result)
    # one text per request, all at once: the continuous scheduler adds and retires rows at every step
    answers = asyncio.run(post_all(url, [{"model": model, "texts": [t], "beam_size": beam_size} for t in sources]))
    for text, answer in zip(sources, answers, strict=True):
        same_translation(alone[text], answer["results"][0])
    asyncio.run(check_streams(server.url, model, beam_size, sources[:8], alone))


async def check_streams(url: str, model: str, beam_size: int, sources: list[str], alone: dict) -> None:
    async def done_event(client: httpx.AsyncClient, text: str) -> dict:
        body = {"model": model, "text": text, "beam_size": beam_size}
        async with client.stream("POST", f"{url}/v1/translate/stream", json=body) as response:
            assert response.status_code == 200
            event, done = None, None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "done":
                    done = httpx.Response(200, content=line[6:]).json()
            assert done is not None, f"no done event for {text!r}"
            return done

    async with httpx.AsyncClient(timeout=120) as client:
        finals = await asyncio.gather(*[done_event(client, t) for t in sources])
    for text, final in zip(sources, finals, strict=True):
        same_translation(alone[text], final)
