"""The locust users' answer checks: right answers pass, and each way of being wrong is caught and named."""

from __future__ import annotations

import copy
import json

import pytest

from loadtest.workload import (
    GENERATE_MIX,
    CheckCounter,
    ExpectedLabels,
    atis_utterances,
    caption_prefixes,
    check_classification,
    check_completion,
    check_generation,
    check_stream,
    check_tagging,
    check_translation,
    generation_length,
    parse_check_line,
    parse_sse,
    read_lines,
    review_texts,
    runs_a_task,
    step_users,
    write_texts,
)

GOOD_CLASSIFY = {"model": "reviews", "version": 1,
                 "results": [{"label": "pos", "score": 0.75, "probabilities": {"neg": 0.25, "pos": 0.75}}]}
TAG_TEXT = "fly from new york to boston, monday"
GOOD_TAG = {"model": "flights", "version": 1, "results": [{
    "tokens": [{"text": w, "start": a, "end": b, "tag": t, "score": 0.9} for w, a, b, t in (
        ("fly", 0, 3, "O"), ("from", 4, 8, "O"), ("new", 9, 12, "B-fromloc"), ("york", 13, 17, "I-fromloc"),
        ("to", 18, 20, "O"), ("boston", 21, 27, "B-toloc"), (",", 27, 28, "O"), ("monday", 29, 35, "B-day"))],
    "entities": [{"label": "fromloc", "start": 9, "end": 17, "text": "new york", "score": 0.9},
                 {"label": "toloc", "start": 21, "end": 27, "text": "boston", "score": 0.9},
                 {"label": "day", "start": 29, "end": 35, "text": "monday", "score": 0.9}],
    "intent": {"label": "flight", "score": 0.8, "probabilities": {"flight": 0.8, "airfare": 0.2}},
    "truncated_at": None}]}
GOOD_TRANSLATE = {"model": "numbers", "version": 1, "results": [{"translation": "eins zwei", "score": -0.3}]}
GOOD_COMPLETE = {"model": "animals", "version": 1, "results": [
    {"partial": "eleph", "suggestions": [{"word": "elephant", "probability": 0.9},
                                         {"word": "elephants", "probability": 0.05}]},
    {"partial": "", "suggestions": [{"word": "jumps", "probability": 0.4}, {"word": "runs", "probability": 0.4}]}]}
GOOD_GENERATE = {"model": "animals", "version": 1, "results": [{
    "text": " jumps over", "tokens": [" ", "ju", "mps", " over"], "token_ids": [224, 299, 80, 271],
    "log_probs": [-1.2, -0.01, 0.0, -0.3], "finish_reason": "length", "seed": 3, "prompt_tokens": 4}]}


def sse(*events: tuple[str, dict]) -> str:
    return "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events)


GOOD_STREAM = sse(("token", {"index": 0, "token_id": 7, "text": "eins"}),
                  ("token", {"index": 1, "token_id": 9, "text": " zwei"}),
                  ("done", {"translation": "eins zwei", "score": -0.3, "target_tokens": ["eins", " zwei"]}))


def broken(path: str, value: object) -> dict:
    """GOOD_CLASSIFY with one field of its first result replaced."""
    body = copy.deepcopy(GOOD_CLASSIFY)
    body["results"][0][path] = value
    return body


def test_a_right_classification_passes_with_and_without_known_labels():
    assert check_classification(GOOD_CLASSIFY, 1, {"pos", "neg"}) is None
    assert check_classification(GOOD_CLASSIFY, 1, None) is None


@pytest.mark.parametrize(("body", "n", "labels", "message"), [
    ({"error": "boom"}, 1, None, "no results list"),
    (GOOD_CLASSIFY, 2, None, "1 results for 2 texts"),
    (GOOD_CLASSIFY, 1, {"fresh", "rotten"}, "are not the model's"),
    (broken("label", "fresh"), 1, None, "is not one of"),
    (broken("probabilities", {"neg": 0.5, "pos": 0.75}), 1, None, "do not form a distribution"),
    (broken("probabilities", {"neg": -0.25, "pos": 1.25}), 1, None, "do not form a distribution"),
    (broken("label", "neg"), 1, None, "not the most probable"),
    (broken("score", 0.5), 1, None, "is not the label's probability"),
    (broken("probabilities", {}), 1, None, "no probabilities"),
    (broken("probabilities", {"neg": "x", "pos": 0.75}), 1, None, "no probabilities"),
])
def test_a_wrong_classification_is_caught(body, n, labels, message):
    error = check_classification(body, n, labels)
    assert error is not None and message in error


def test_expected_labels_are_given_or_learnt_from_the_first_right_answer():
    given = ExpectedLabels()
    given.expect("fresh, rotten")
    assert "are not the model's" in given.check(GOOD_CLASSIFY, 1)
    learnt = ExpectedLabels()
    learnt.expect("")
    assert learnt.check(broken("label", "x"), 1) is not None and learnt.labels is None  # not learnt from a bad one
    assert learnt.check(GOOD_CLASSIFY, 1) is None and learnt.labels == {"neg", "pos"}
    other = copy.deepcopy(GOOD_CLASSIFY)
    other["results"][0]["probabilities"] = {"pos": 0.75, "neg": 0.2, "meh": 0.05}
    assert "are not the model's" in learnt.check(other, 1)


@pytest.mark.parametrize(("body", "message"), [
    ({"results": [{"translation": "", "score": -1.0}]}, "empty translation"),
    ({"results": [{"translation": "   ", "score": -1.0}]}, "empty translation"),
    ({"results": [{"translation": "eins", "score": None}]}, "is not a number"),
    ({"results": [{"translation": "eins", "score": float("nan")}]}, "is not a number"),
    ({"results": []}, "0 results for 1 texts"),
    ([], "no results list"),
])
def test_translations_must_be_non_empty_with_a_score(body, message):
    assert check_translation(GOOD_TRANSLATE, 1) is None
    error = check_translation(body, 1)
    assert error is not None and message in error


def completion(result: dict) -> dict:
    """An answer for one text with this result."""
    return {"model": "animals", "version": 1, "results": [result]}


def words(*pairs: tuple[object, object], partial: object = "ele") -> dict:
    return completion({"partial": partial, "suggestions": [{"word": w, "probability": p} for w, p in pairs]})


def test_a_right_completion_passes_with_no_words_or_up_to_k():
    assert check_completion(GOOD_COMPLETE, 2, 5) is None
    assert check_completion(GOOD_COMPLETE, 2, 2) is None
    assert check_completion(words(), 1, 5) is None  # no word of the model starts with the partial
    assert check_completion(words(("elephant", 1.0), partial=""), 1, 1) is None


@pytest.mark.parametrize(("body", "n", "k", "message"), [
    ({"error": "boom"}, 1, 5, "no results list"),
    (GOOD_COMPLETE, 1, 5, "2 results for 1 texts"),
    (GOOD_COMPLETE, 2, 1, "2 suggestions for k=1"),
    (completion({"suggestions": []}), 1, 5, "no partial or suggestions list"),
    (completion({"partial": "ele", "suggestions": None}), 1, 5, "no partial or suggestions list"),
    (words(("elephant", 0.5), ("cat", 0.1)), 1, 5, "do not all start with 'ele'"),
    (words(("", 0.5)), 1, 5, "do not all start with"),
    (words((None, 0.5)), 1, 5, "do not all start with"),
    (words(("elephant", 0.5), ("elephant", 0.1)), 1, 5, "a word twice"),
    (words(("elephant", 0.0)), 1, 5, "are not in (0, 1]"),
    (words(("elephant", 1.5)), 1, 5, "are not in (0, 1]"),
    (words(("elephant", "0.5")), 1, 5, "are not in (0, 1]"),
    (words(("elephant", float("nan"))), 1, 5, "are not in (0, 1]"),
    (words(("elephant", 0.7), ("elephants", 0.6)), 1, 5, "sum past 1"),
    (words(("elephant", 0.1), ("elephants", 0.6)), 1, 5, "are not sorted"),
])
def test_a_wrong_completion_is_caught(body, n, k, message):
    error = check_completion(body, n, k)
    assert error is not None and message in error


def generated(field: str, value: object) -> dict:
    """GOOD_GENERATE with one field of its result replaced."""
    body = copy.deepcopy(GOOD_GENERATE)
    body["results"][0][field] = value
    return body


def test_a_right_generation_passes_with_exactly_max_tokens_under_ignore_eos():
    assert check_generation(GOOD_GENERATE, 1, 4, ignore_eos=True) is None
    assert check_generation(GOOD_GENERATE, 1, 8, ignore_eos=False) is None  # ended early: allowed without ignore_eos
    assert check_generation(generated("finish_reason", "eos"), 1, 8, ignore_eos=False) is None


@pytest.mark.parametrize(("body", "max_tokens", "ignore_eos", "message"), [
    ({"results": None}, 4, True, "no results list"),
    ({"results": []}, 4, True, "0 results for 1 texts"),
    (generated("text", None), 4, True, "no text or token_ids list"),
    (generated("token_ids", None), 4, True, "no text or token_ids list"),
    (generated("token_ids", [1, 2, "3", 4]), 4, True, "no text or token_ids list"),
    (GOOD_GENERATE, 8, True, "4 tokens for max_tokens=8 and ignore_eos"),
    (GOOD_GENERATE, 3, True, "4 tokens for max_tokens=3"),
    (GOOD_GENERATE, 3, False, "4 tokens for max_tokens=3"),
    (generated("finish_reason", "eos"), 4, True, "finish_reason 'eos' with ignore_eos"),
    (generated("finish_reason", "done"), 8, False, "finish_reason 'done'"),
    (generated("finish_reason", None), 8, False, "finish_reason None"),
    (generated("log_probs", [-1.0, -1.0, -1.0]), 4, True, "not one log-probability per token"),
    (generated("log_probs", None), 4, True, "not one log-probability per token"),
    (generated("log_probs", [-1.0, 0.5, -1.0, -1.0]), 4, True, "are not all <= 0"),
    (generated("log_probs", [-1.0, float("-inf"), -1.0, -1.0]), 4, True, "are not all <= 0"),
    (generated("log_probs", [-1.0, None, -1.0, -1.0]), 4, True, "are not all <= 0"),
])
def test_a_wrong_generation_is_caught(body, max_tokens, ignore_eos, message):
    error = check_generation(body, 1, max_tokens, ignore_eos)
    assert error is not None and message in error


def test_generation_lengths_follow_the_mix():
    assert GENERATE_MIX == ((8, 0.7), (64, 0.3))
    assert [generation_length(u) for u in (0.0, 0.69, 0.7, 0.99, 0.9999999999)] == [8, 8, 64, 64, 64]
    draws = [generation_length(i / 1000) for i in range(1000)]
    assert draws.count(8) == 700 and draws.count(64) == 300


def test_the_caption_prefixes_end_inside_a_word_or_after_one():
    prefixes = caption_prefixes()
    assert len(prefixes) >= 4 and all(p.strip() and "\n" not in p for p in prefixes)
    assert any(p.endswith(" ") for p in prefixes) and any(not p.endswith(" ") for p in prefixes)


def tag_answer(where: str, value: object) -> dict:
    """GOOD_TAG with one field replaced: "entities" or "tokens" (the whole list), or "entities.0.end" and the like."""
    body = copy.deepcopy(GOOD_TAG)
    target, *path = where.split(".")
    if not path:
        body["results"][0][target] = value
    else:
        body["results"][0][target][int(path[0])][path[1]] = value
    return body


def test_a_right_tagging_passes_and_its_offsets_are_the_texts():
    assert check_tagging(GOOD_TAG, [TAG_TEXT]) is None
    assert check_tagging({"results": [{"tokens": [], "entities": []}]}, [""]) is None


@pytest.mark.parametrize(("body", "texts", "message"), [
    ({"error": "boom"}, [TAG_TEXT], "no results list"),
    (GOOD_TAG, [TAG_TEXT, TAG_TEXT], "1 results for 2 texts"),
    (tag_answer("entities", None), [TAG_TEXT], "no tokens or entities list"),
    (tag_answer("tokens", "fly"), [TAG_TEXT], "no tokens or entities list"),
    (tag_answer("entities.0.end", 16), [TAG_TEXT], "'new york' is not 'new yor'"),
    (tag_answer("entities.1.text", "denver"), [TAG_TEXT], "'denver' is not 'boston'"),
    (tag_answer("tokens.6.start", 26), [TAG_TEXT], "token ',' is not 'n,'"),
    (tag_answer("entities.2.end", 99), [TAG_TEXT], "no offsets within the text"),
    (tag_answer("entities.2.start", None), [TAG_TEXT], "no offsets within the text"),
    (tag_answer("entities.0.label", ""), [TAG_TEXT], "without a label"),
    (GOOD_TAG, ["fly from newark to boston, monday"], "is not"),  # the offsets of another text
])
def test_a_wrong_tagging_is_caught(body, texts, message):
    error = check_tagging(body, texts)
    assert error is not None and message in error


@pytest.mark.parametrize(("stream", "message"), [
    ("", "no events"),
    (sse(("token", {"index": 0, "text": "eins"}), ("error", {"error": "deadline exceeded"})), "error event"),
    (sse(("token", {"index": 0, "text": "eins"})), "not 'done'"),
    (sse(("token", {"index": 1, "text": "eins"}), ("done", {"translation": "eins", "score": 0.0})), "numbered"),
    (sse(("done", {"translation": "eins", "score": 0.0})), "numbered"),
    (sse(("token", {"index": 0, "text": ""}), ("done", {"translation": "", "score": 0.0})), "empty translation"),
    (sse(("ping", {}), ("token", {"index": 0}), ("done", {"translation": "x", "score": 0.0})), "other than 'token'"),
])
def test_a_broken_stream_is_caught(stream, message):
    assert check_stream(GOOD_STREAM) is None
    error = check_stream(stream)
    assert error is not None and message in error


def test_parse_sse_reads_events_and_multi_line_data():
    text = 'event: token\r\ndata: {"index": 0}\r\n\r\ndata: {"a":\ndata: 1}\n\nevent: x\ndata: not json\n\n'
    assert parse_sse(text) == [("token", {"index": 0}), ("message", {"a": 1}), ("x", None)]


def test_check_counts_round_trip_through_the_log_line():
    counter = CheckCounter()
    for outcome in ("ok", "ok", "failed"):
        counter.record("classify", outcome)
    counter.record("stream", "http_error")
    log = f"some line\n[INFO] {counter.log_line()}\nlast line\n"
    assert parse_check_line(log) == {"classify": {"ok": 2, "failed": 1, "http_error": 0},
                                     "stream": {"ok": 0, "failed": 0, "http_error": 1}}
    with pytest.raises(ValueError, match="no content-check line"):
        parse_check_line("nothing here")


def test_step_load_adds_users_each_step_and_stops_after_the_last():
    schedule = [step_users(t, 4, 10.0, 3) for t in (0.0, 9.9, 10.0, 25.0, 29.9, 30.0)]
    assert schedule == [4, 4, 8, 12, 12, None]
    assert step_users(1000.0, 2, 10.0, 0) == 202  # no step limit: -t bounds the run


def test_a_user_class_runs_only_if_a_task_survives_the_tags():
    """Classes shaped as locust makes them (`tasks`, and `@tag` sets `locust_tag_set`); importing locust here
    would monkey-patch the test process with gevent."""
    def classify() -> None: ...

    def plain() -> None: ...

    classify.locust_tag_set = {"classify"}  # type: ignore[attr-defined]
    tagged, untagged = type("Tagged", (), {"tasks": [classify]}), type("Untagged", (), {"tasks": [plain]})
    assert runs_a_task(tagged, None, None) and runs_a_task(tagged, {"classify"}, None)
    assert not runs_a_task(tagged, {"translate"}, None)
    assert not runs_a_task(tagged, None, {"classify"}) and runs_a_task(tagged, None, {"stream"})
    assert not runs_a_task(untagged, {"classify"}, None) and runs_a_task(untagged, None, {"classify"})


def test_the_data_set_texts_are_written_one_per_line_for_containers(tmp_path):
    files = write_texts(tmp_path / "texts")
    assert set(files) == {"classify", "translate", "tag"}
    reviews, sentences = read_lines(files["classify"]), read_lines(files["translate"])
    utterances = read_lines(files["tag"])
    assert len(reviews) == 2000 and len(sentences) == 1000  # Rotten Tomatoes sample, Multi30k test2016
    assert len(utterances) == 893  # the ATIS test split
    assert reviews == [" ".join(t.split()) for t in review_texts()]
    assert utterances == atis_utterances() and utterances[0].startswith("i would like to find a flight from charlotte")
    assert all("\n" not in t and t for t in reviews + sentences + utterances)
