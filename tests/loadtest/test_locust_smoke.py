"""The locustfile, run headless by locust itself against a real server with the tiny models."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from loadtest.workload import parse_check_line
from tests.conftest import ROOT
from tests.service.api.test_api import metric

LOCUST = Path(sys.executable).parent / "locust"
# Each kind's request names in the stats; generation reports its two lengths apart.
NAMES = {"classify": ("/v1/classify",), "tag": ("/v1/tag",), "translate": ("/v1/translate",),
         "stream": ("/v1/translate/stream",), "complete": ("/v1/complete",),
         "generate": ("/v1/generate (8 tokens)", "/v1/generate (64 tokens)")}
WEIGHTS = (3, 1, 2, 1, 1, 1)  # the user classes' weights, in the order of NAMES


def run_locust(url: str, tmp_path: Path, *args: str, during: Callable[[], None] | None = None,
               ) -> tuple[int, dict[str, dict[str, str]], dict[str, dict], str]:
    """Exit code, the CSV stats rows by name, the final stats by name, and the log. With `during`, locust is
    stopped (Ctrl-C: it writes its stats and exits) once `during` has returned.

    The CSV is rewritten every second while locust runs, so its counts may miss the last second; the JSON file
    is written at exit from the final stats and is the one to compare exact counts with."""
    texts = tmp_path / "texts.txt"
    texts.write_text("one two three\nseven eight nine four\nfive six\nzero one two three four five\n", "utf-8")
    prefixes = tmp_path / "prefixes.txt"
    prefixes.write_text("the eleph\nthe cat jumps over the \na gir\nthe dog runs along the river\n", "utf-8")
    prefix = tmp_path / "run"
    log_path = tmp_path / "locust.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(LOCUST), "-f", "loadtest/locustfile.py", "--headless", "--host", url, "--csv", str(prefix),
             "--html", str(tmp_path / "report.html"), "--json-file", str(prefix), "--only-summary",
             "--texts-file", str(texts), "--classifier-model", "reviews", "--translator-model", "numbers",
             "--tagger-model", "flights", "--lm-model", "animals", "--lm-texts-file", str(prefixes),
             "--think-time", "0.05", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            if during is not None:
                during()
                proc.send_signal(signal.SIGINT)
            code = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with open(f"{prefix}_stats.csv", newline="", encoding="utf-8") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    final = {entry["name"]: entry for entry in json.loads(Path(f"{prefix}.json").read_text("utf-8"))}
    return code, rows, final, log_path.read_text("utf-8", errors="replace")


def test_every_request_kind_runs_and_every_answer_is_checked(make_server, tmp_path):
    """9 users (weights 3:1:2:1:1:1 over classify, tag, translate, stream, complete, generate) of 5 requests each,
    then the run ends by itself: exact counts, whatever the machine's speed (-t only bounds a hang)."""
    server = make_server()
    count = str(sum(WEIGHTS))
    code, rows, final, log = run_locust(server.url, tmp_path, "-u", count, "-r", count, "-t", "100s",
                                        "--iterations", "5", "--classifier-labels", "neg,pos")
    assert code == 0, log[-3000:]
    checks = parse_check_line(log)
    assert set(final) <= {name for names in NAMES.values() for name in names} | {"Aggregated"}, sorted(final)
    for (kind, names), users in zip(NAMES.items(), WEIGHTS, strict=True):
        entries = [final[name] for name in names if name in final]
        assert sum(e["num_requests"] for e in entries) == users * 5, (kind, entries)
        assert sum(e["num_failures"] for e in entries) == 0
        assert checks[kind] == {"ok": users * 5, "failed": 0, "http_error": 0}
    assert (tmp_path / "report.html").read_text("utf-8").count("/v1/classify") > 0


def test_a_200_with_wrong_content_counts_as_a_failure(make_server, tmp_path):
    """The tiny classifier's classes are neg/pos; demanding fresh/rotten must fail every answer."""
    server = make_server()
    code, rows, final, log = run_locust(server.url, tmp_path, "--tags", "classify", "-r", "4", "--step-users",
                                        "2", "--step-seconds", "1", "--step-count", "3",
                                        "--classifier-labels", "fresh,rotten")
    assert code == 1, log[-3000:]  # locust's exit code when any request failed
    assert "No tasks defined" not in log and "TranslateUser" not in log  # only the tagged user class ran
    assert (tmp_path / "run_exceptions.csv").read_text("utf-8").count("\n") <= 1  # the header alone
    assert int(rows["/v1/classify"]["Failure Count"]) == int(rows["/v1/classify"]["Request Count"]) > 0
    assert set(rows) == {"/v1/classify", "Aggregated"}
    requests = final["/v1/classify"]["num_requests"]
    assert requests > 0 and final["/v1/classify"]["num_failures"] == requests
    assert parse_check_line(log) == {"classify": {"ok": 0, "failed": requests, "http_error": 0}}
    failures = (tmp_path / "run_failures.csv").read_text("utf-8")
    assert "are not the model's" in failures


def test_load_and_unload_during_a_locust_run_fail_nothing(make_server, repo, tmp_path):
    """Hot reloads of the models under load, and load/unload of another model: zero failed requests."""
    shutil.copytree(repo / "reviews" / "1", repo / "reviews" / "2")
    shutil.copytree(repo / "reviews" / "1", repo / "spare" / "1")
    server = make_server(enable_model_control=True)
    control: list[int] = []

    def served(model: str) -> float:
        scrape = httpx.get(f"{server.url}/metrics", timeout=10).text
        return metric(scrape, "seqserve_requests_total", model=model, status="200")

    def churn() -> None:  # three rounds, all while locust's traffic flows (locust is stopped after them)
        deadline = time.monotonic() + 60
        while served("reviews") < 5 or served("numbers") < 5:
            assert time.monotonic() < deadline, "locust sent no traffic"
            time.sleep(0.05)
        for _ in range(3):
            for path in ("reviews/load", "numbers/load", "spare/load", "spare/unload"):
                control.append(httpx.post(f"{server.url}/v2/repository/models/{path}", timeout=60).status_code)

    code, _, final, log = run_locust(server.url, tmp_path, "-u", "6", "-r", "6", "-t", "100s",
                                     "--classifier-labels", "neg,pos", during=churn)
    assert code == 0, log[-3000:]
    assert sum(entry["num_failures"] for entry in final.values()) == 0
    assert sum(entry["num_requests"] for entry in final.values()) > 0
    assert control == [200] * 12
