"""The locust users' answer checks: right answers pass, and each way of being wrong is caught and named."""

from __future__ import annotations

import copy
import json

import pytest

from loadtest.workload import (
    CheckCounter,
    ExpectedLabels,
    atis_utterances,
    check_classification,
    check_stream,
    check_tagging,
    check_translation,
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
