"""POST /v1/tag and v2 infer on a tagger over real HTTP, against a real server and real onnxruntime sessions."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

FLIGHT = "show me flights from boston to new york on monday"


def tag(url: str, texts: list[str], **extra: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/tag", json={"texts": texts, **extra}, timeout=30)


def test_tag_returns_tokens_entities_and_intent(make_server):
    server = make_server()
    fare = "how much is a ticket to San Francisco from Dallas?"
    response = tag(server.url, [FLIGHT, fare])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "flights" and body["version"] == 1
    first, second = body["results"]
    assert [t["text"] for t in first["tokens"]] == FLIGHT.split()
    for result, text in ((first, FLIGHT), (second, fare)):
        for token in result["tokens"]:
            assert text[token["start"]:token["end"]] == token["text"]
            assert 0.0 <= token["score"] <= 1.0
        for entity in result["entities"]:
            assert text[entity["start"]:entity["end"]] == entity["text"]
        assert result["truncated_at"] is None
        assert sum(result["intent"]["probabilities"].values()) == pytest.approx(1.0)
    assert [(e["label"], e["text"]) for e in first["entities"]] == [
        ("fromloc", "boston"), ("toloc", "new york"), ("depart_date.day_name", "monday")]
    assert first["intent"]["label"] == "flight" and second["intent"]["label"] == "airfare"
    # punctuation at the end of a word is a word of its own
    assert second["tokens"][-1] == {**second["tokens"][-1], "text": "?", "start": len(fare) - 1, "end": len(fare)}


def test_tag_offsets_in_any_script(make_server):
    """Chinese without spaces is tagged per character, emoji and combining marks stay inside their words, and
    every offset maps back to the exact characters of the input."""
    server = make_server()
    texts = ["从北京飞往上海 ✈️", "fly to boston 👍🏽 tomorrow", "café naïve देवनागरी  \t tabs"]
    results = tag(server.url, texts).json()["results"]
    words = [[t["text"] for t in r["tokens"]] for r in results]
    assert words[0] == ["从", "北", "京", "飞", "往", "上", "海", "✈️"]
    assert words[1] == ["fly", "to", "boston", "👍🏽", "tomorrow"]
    assert words[2] == ["café", "naïve", "देवनागरी", "tabs"]
    for text, result in zip(texts, results, strict=True):
        for token in result["tokens"]:
            assert text[token["start"]:token["end"]] == token["text"]


def test_tag_says_where_a_long_text_was_cut(make_server, tagger_version):
    max_length = json.loads((tagger_version / "config.json").read_text())["max_length"]
    server = make_server()
    text = " ".join(["boston"] * (max_length + 20))
    result = tag(server.url, [text]).json()["results"][0]
    kept = len(result["tokens"])
    assert 0 < kept <= max_length
    assert result["truncated_at"] == result["tokens"][-1]["end"] + 1
    assert text[result["truncated_at"]:].split() == ["boston"] * (max_length + 20 - kept)


def test_tag_errors(make_server):
    url = make_server().url
    assert tag(url, ["fine", "  "]).status_code == 422
    assert tag(url, []).status_code == 422
    response = tag(url, ["fine"], model="reviews")
    assert response.status_code in (400, 404, 422) and "tagger" in response.json()["error"]
    assert tag(url, ["fine"], model="nope").status_code == 404


def test_v2_infer_on_a_tagger(make_server):
    import tritonclient.http as triton

    url = make_server().url
    meta = httpx.get(f"{url}/v2/models/flights").json()
    assert meta["parameters"]["kind"] == "tagger"
    names = [o["name"] for o in meta["outputs"]]
    assert names == ["tags", "token_scores", "token_offsets", "entities", "intent", "intent_score",
                     "intent_probabilities"]
    texts = [FLIGHT, "how much is a ticket to miami"]
    rest = tag(url, texts).json()["results"]
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    result = client.infer("flights", [text])
    tags = result.as_numpy("tags")
    offsets = result.as_numpy("token_offsets")
    width = max(len(r["tokens"]) for r in rest)
    assert tags.shape == (2, width) and offsets.shape == (2, width, 2)
    for row, r in enumerate(rest):
        n = len(r["tokens"])
        assert [x.decode() for x in tags[row, :n]] == [t["tag"] for t in r["tokens"]]
        assert all(x.decode() == "" for x in tags[row, n:])
        assert offsets[row, :n].tolist() == [[t["start"], t["end"]] for t in r["tokens"]]
        assert (offsets[row, n:] == -1).all()
        assert json.loads(result.as_numpy("entities")[row].decode()) == r["entities"]
        assert result.as_numpy("intent")[row].decode() == r["intent"]["label"]
    assert result.as_numpy("intent_probabilities").shape == (2, 2)
    client.close()
