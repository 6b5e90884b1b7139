"""/v1/translate's n-best lists and paragraphs, the same through the stream and v2, and the response cache in
front of every kind's queue: hits equal computed answers, and a new version empties the model's entries."""

from __future__ import annotations

import shutil

import httpx
import pytest

from service.engine.repository import read_config
from service.engine.translator import DecodeOptions, TranslatorRuntime
from tests.service.api.test_api import metric, sse_events


def scrape(url: str, name: str, **labels: str) -> float:
    return metric(httpx.get(f"{url}/metrics", timeout=10).text, name, **labels)


def post(url: str, path: str, **body: object) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60)


def translate(url: str, **body: object) -> dict:
    response = post(url, "/v1/translate", model="numbers", **body)
    assert response.status_code == 200, response.text
    return response.json()


def test_num_hypotheses_gives_the_n_best_in_order_with_their_scores(make_server, repo):
    server = make_server(response_cache_entries=0)
    texts = ["two five seven", "three three one eight"]
    body = translate(server.url, texts=texts, beam_size=4, num_hypotheses=3)
    runtime = TranslatorRuntime(repo / "numbers" / "1", read_config(repo / "numbers" / "1"))
    bare = runtime.translate(texts, DecodeOptions(beam_size=4, num_hypotheses=3))
    for result, engine in zip(body["results"], bare, strict=True):
        hyps = result["hypotheses"]
        assert len(hyps) == 3 and hyps[0] == {"translation": result["translation"], "score": result["score"]}
        assert [h["score"] for h in hyps] == sorted((h["score"] for h in hyps), reverse=True)
        assert [h["translation"] for h in hyps] == [a.text for a in engine.alternatives]
        assert [h["score"] for h in hyps] == pytest.approx([a.score for a in engine.alternatives], abs=1e-5)
    plain = translate(server.url, texts=texts, beam_size=4)["results"]
    assert [r["translation"] for r in plain] == [r["translation"] for r in body["results"]]
    assert all("hypotheses" not in r for r in plain)
    assert len(translate(server.url, texts=texts[:1], beam_size=1, num_hypotheses=1)["results"][0]["hypotheses"]) == 1

    too_many = post(server.url, "/v1/translate", model="numbers", texts=texts, beam_size=4, num_hypotheses=5)
    assert too_many.status_code == 422 and "num_hypotheses 5 exceeds beam_size=4" in too_many.text

    events = sse_events(server.url, "/v1/translate/stream",
                        {"model": "numbers", "text": texts[0], "beam_size": 4, "num_hypotheses": 3})
    done = events[-1][1]
    assert events[-1][0] == "done" and done["hypotheses"] == body["results"][0]["hypotheses"]

    v2 = post(server.url, "/v2/models/numbers/infer", inputs=[
        {"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}],
        parameters={"beam_size": 4, "num_hypotheses": 3}).json()
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert outputs["hypotheses"]["shape"] == [2, 3] and outputs["hypothesis_scores"]["shape"] == [2, 3]
    flat = [h for r in body["results"] for h in r["hypotheses"]]
    assert outputs["hypotheses"]["data"] == [h["translation"] for h in flat]
    assert outputs["hypothesis_scores"]["data"] == pytest.approx([h["score"] for h in flat], abs=1e-5)
    bad = post(server.url, "/v2/models/numbers/infer", inputs=[
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["one"]}],
        parameters={"beam_size": 2, "num_hypotheses": 3})
    assert bad.status_code == 400 or bad.status_code == 422
    assert "num_hypotheses 3 exceeds beam_size=2" in bad.text


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_a_paragraph_is_translated_sentence_by_sentence_and_keeps_its_whitespace(make_server, scheduler):
    server = make_server(scheduler=scheduler, response_cache_entries=0)
    paragraph = "  two five. three four one!\n\nsix seven?  eight. "
    sentences = ["two five.", "three four one!", "six seven?", "eight."]
    alone = [r["translation"] for r in translate(server.url, texts=sentences, beam_size=3)["results"]]
    (result,) = translate(server.url, texts=[paragraph], beam_size=3, return_attention=True,
                          num_hypotheses=2)["results"]
    assert result["translation"] == f"  {alone[0]} {alone[1]}\n\n{alone[2]}  {alone[3]} "
    assert [s["source"] for s in result["sentences"]] == sentences
    assert [paragraph[s["start"]: s["end"]] for s in result["sentences"]] == sentences
    assert [s["translation"] for s in result["sentences"]] == alone
    for sentence in result["sentences"]:  # tokens and attention per sentence
        assert len(sentence["attention"]) == len(sentence["target_tokens"])
        assert all(len(row) == len(sentence["source_tokens"]) for row in sentence["attention"])
        assert sentence["hypotheses"][0]["translation"] == sentence["translation"]
    assert "attention" not in result and "source_tokens" not in result
    assert result["score"] == pytest.approx(sum(s["score"] for s in result["sentences"]) / 4)
    assert result["hypotheses"][0]["translation"] == result["translation"]

    whole = translate(server.url, texts=[paragraph], beam_size=3, split_sentences=False)["results"][0]
    assert "sentences" not in whole  # one sequence, as before paragraphs were split
    single = translate(server.url, texts=["  two five.  "], beam_size=3)["results"][0]
    assert "sentences" not in single  # one sentence: queued as it is

    v2 = post(server.url, "/v2/models/numbers/infer", inputs=[
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": [paragraph]}],
        parameters={"beam_size": 3}).json()
    assert v2["outputs"][0]["data"] == [result["translation"]]


def test_a_paragraph_of_more_sentences_than_the_limit_is_refused_naming_it(make_server):
    server = make_server(max_texts_per_request=4)
    response = post(server.url, "/v1/translate", model="numbers", texts=["one. two. three.", "four. five."])
    assert response.status_code == 422
    assert "5 sentences" in response.text and "max_texts_per_request=4" in response.text
    fine = post(server.url, "/v1/translate", model="numbers", texts=["one. two. three.", "four. five."],
                split_sentences=False)
    assert fine.status_code == 200


KIND_REQUESTS = [
    ("/v1/classify", {"model": "reviews", "texts": ["a great film", "dull and bad"]}, "reviews"),
    ("/v1/tag", {"model": "flights", "texts": ["flights from boston to denver"]}, "flights"),
    ("/v1/translate", {"model": "numbers", "texts": ["two five", "one. three four."], "beam_size": 3,
                       "return_attention": True, "num_hypotheses": 2}, "numbers"),
    ("/v1/complete", {"model": "animals", "texts": ["the eleph"], "k": 3}, "animals"),
    ("/v1/generate", {"model": "animals", "texts": ["the cat"], "max_tokens": 6, "seed": 3, "temperature": 0.9},
     "animals"),
]


def test_cached_answers_equal_computed_ones_for_every_kind(make_server):
    cached, uncached = make_server(), make_server(response_cache_entries=0)
    for path, body, model in KIND_REQUESTS:
        first = post(cached.url, path, **body).json()
        hits = scrape(cached.url, "seqserve_cache_hits_total", model=model)
        again = post(cached.url, path, **body).json()
        assert again == first, path
        assert scrape(cached.url, "seqserve_cache_hits_total", model=model) == hits + len(body["texts"]) + (
            1 if path == "/v1/translate" else 0)  # the paragraph's two sentences are two entries
        assert post(uncached.url, path, **body).json() == first, path
    assert scrape(uncached.url, "seqserve_cache_hits_total", model="reviews") == 0
    assert scrape(cached.url, "seqserve_cache_entries") > 0

    other = post(cached.url, "/v1/translate", model="numbers", texts=["two five"], beam_size=2).json()
    assert other == post(uncached.url, "/v1/translate", model="numbers", texts=["two five"], beam_size=2).json()
    before = scrape(cached.url, "seqserve_cache_hits_total", model="animals")
    for _ in range(2):  # sampling without a seed draws afresh: never cached
        post(cached.url, "/v1/generate", model="animals", texts=["the dog"], max_tokens=4, temperature=1.0)
    assert scrape(cached.url, "seqserve_cache_hits_total", model="animals") == before


def test_a_new_version_empties_the_models_cache_entries(make_server, repo):
    server = make_server(enable_model_control=True)
    body = {"model": "numbers", "texts": ["two five", "seven one"], "beam_size": 2}
    first = post(server.url, "/v1/translate", **body).json()
    assert post(server.url, "/v1/translate", **body).json() == first
    post(server.url, "/v1/classify", model="reviews", texts=["a great film"])
    entries = scrape(server.url, "seqserve_cache_entries")
    shutil.copytree(repo / "numbers" / "1", repo / "numbers" / "2")
    assert post(server.url, "/v2/repository/models/numbers/load").status_code == 200
    assert scrape(server.url, "seqserve_cache_entries") == entries - 2  # the classifier's entry stays
    misses = scrape(server.url, "seqserve_cache_misses_total", model="numbers")
    after = post(server.url, "/v1/translate", **body).json()
    assert after["version"] == 2 and after["results"] == first["results"]  # same weights, computed again
    assert scrape(server.url, "seqserve_cache_misses_total", model="numbers") == misses + 2
    assert post(server.url, "/v2/repository/models/numbers/unload").status_code == 200
    assert scrape(server.url, "seqserve_cache_entries") == entries - 2
