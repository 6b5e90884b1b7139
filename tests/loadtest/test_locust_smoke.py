"""The locustfile, run headless by locust itself against a real server with the tiny models."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from loadtest.workload import parse_check_line
from tests.conftest import ROOT

LOCUST = Path(sys.executable).parent / "locust"
NAMES = {"classify": "/v1/classify", "translate": "/v1/translate", "stream": "/v1/translate/stream"}


def run_locust(url: str, tmp_path: Path, *args: str) -> tuple[int, dict[str, dict[str, str]], dict[str, dict], str]:
    """Exit code, the CSV stats rows by name, the final stats by name, and the log.

    The CSV is rewritten every second while locust runs, so its counts may miss the last second; the JSON file
    is written at exit from the final stats and is the one to compare exact counts with."""
    texts = tmp_path / "texts.txt"
    texts.write_text("one two three\nseven eight nine four\nfive six\nzero one two three four five\n", "utf-8")
    prefix = tmp_path / "run"
    proc = subprocess.run(
        [str(LOCUST), "-f", "loadtest/locustfile.py", "--headless", "--host", url, "--csv", str(prefix),
         "--html", str(tmp_path / "report.html"), "--json-file", str(prefix), "--only-summary",
         "--texts-file", str(texts), "--classifier-model", "reviews", "--translator-model", "numbers",
         "--think-time", "0.05", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    with open(f"{prefix}_stats.csv", newline="", encoding="utf-8") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    final = {entry["name"]: entry for entry in json.loads(Path(f"{prefix}.json").read_text("utf-8"))}
    return proc.returncode, rows, final, proc.stdout + proc.stderr


def test_every_request_kind_runs_and_every_answer_is_checked(make_server, tmp_path):
    server = make_server()
    code, rows, final, log = run_locust(server.url, tmp_path, "-u", "6", "-r", "6", "-t", "10s",
                                        "--classifier-labels", "neg,pos")
    assert code == 0, log[-3000:]
    checks = parse_check_line(log)
    for kind, name in NAMES.items():
        assert int(rows[name]["Request Count"]) > 0, f"no {name} requests in the CSV"
        assert int(rows[name]["Failure Count"]) == 0
        requests = final[name]["num_requests"]
        assert final[name]["num_failures"] == 0
        assert checks[kind] == {"ok": requests, "failed": 0, "http_error": 0}
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
    stop, control = threading.Event(), []

    def churn() -> None:
        while not stop.wait(0.5):
            for path in ("reviews/load", "numbers/load", "spare/load", "spare/unload"):
                control.append(httpx.post(f"{server.url}/v2/repository/models/{path}", timeout=60).status_code)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        code, _, final, log = run_locust(server.url, tmp_path, "-u", "6", "-r", "6", "-t", "10s",
                                         "--classifier-labels", "neg,pos")
    finally:
        stop.set()
        worker.join()
    assert code == 0, log[-3000:]
    assert sum(entry["num_failures"] for entry in final.values()) == 0
    assert sum(entry["num_requests"] for entry in final.values()) > 0
    assert len(control) >= 8 and set(control) == {200}
