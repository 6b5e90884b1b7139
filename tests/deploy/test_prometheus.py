"""The Prometheus files: promtool's checks and rule unit tests, then a real Prometheus scraping a live service."""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bench.server import free_port, stop_process
from tests.deploy.conftest import DEPLOY, dashboard_queries, template_variables, tool

PROMETHEUS_DIR = DEPLOY / "prometheus"
CLASSIFY, TRANSLATE = 7, 3


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS_DIR)


def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_when_they_should_and_not_otherwise() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def scrape_config(target: str) -> dict[str, Any]:
    """The project's config with its seqserve job pointed at `target`, scraping and evaluating every second."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "seqserve"]
    for static in job["static_configs"]:
        static["targets"] = [target]
    job["scrape_interval"] = "1s"
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
    config["scrape_configs"] = [job]
    return config


class Prometheus:
    """The prometheus binary on a free loopback port with a throwaway TSDB; stopped by its PID."""

    def __init__(self, config: dict[str, Any], tmp: Path) -> None:
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address={self.url.removeprefix('http://')}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        """Until /-/ready answers 200, the query API answers 503 "Service Unavailable" (TSDB still opening)."""
        self.wait_for("readiness", lambda: httpx.get(f"{self.url}/-/ready", timeout=5).status_code == 200)

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{promql}: {body}"
        return list(body["data"]["result"])

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited with {self.proc.returncode}"
            try:
                if value := check():
                    return value
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        pytest.fail(f"prometheus: {what} not seen within {timeout}s; log: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, grace=20)
        self.log.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        started.append(Prometheus(scrape_config(target), tmp_path))
        started[-1].wait_ready()
        return started[-1]

    yield start
    for server in started:
        server.stop()


def requests_by_endpoint(prom: Prometheus) -> dict[str, float]:
    result = prom.query('sum by (endpoint) (seqserve_requests_total{job="seqserve"})')
    return {r["metric"]["endpoint"]: float(r["value"][1]) for r in result}


def test_real_prometheus_counts_requests_and_computes_p99(make_server: Any,
                                                          prometheus_for: Callable[[str], Prometheus]) -> None:
    server = make_server()
    prom = prometheus_for(server.url.removeprefix("http://"))
    classify = {"model": "reviews", "texts": ["a great film"]}
    translate = {"model": "numbers", "texts": ["two five nine"], "beam_size": 1}
    assert httpx.post(f"{server.url}/v1/classify", json=classify, timeout=30).status_code == 200
    # One scrape before the rest, so rate() sees the counters grow rather than appear.
    prom.wait_for("the first request", lambda: requests_by_endpoint(prom).get("/v1/classify") == 1)
    for _ in range(CLASSIFY - 1):
        assert httpx.post(f"{server.url}/v1/classify", json=classify, timeout=30).status_code == 200
    for _ in range(TRANSLATE):
        assert httpx.post(f"{server.url}/v1/translate", json=translate, timeout=30).status_code == 200

    counts = prom.wait_for("all requests", lambda: (c := requests_by_endpoint(prom)).get("/v1/classify") == CLASSIFY
                           and c.get("/v1/translate") == TRANSLATE and c)
    assert counts == {"/v1/classify": CLASSIFY, "/v1/translate": TRANSLATE}
    (total,) = prom.query('sum(seqserve_requests_total{status="200"})')
    assert float(total["value"][1]) == CLASSIFY + TRANSLATE

    p99 = prom.query("histogram_quantile(0.99, sum by (le) (rate(seqserve_request_duration_seconds_bucket[1m])))")
    assert len(p99) == 1
    value = float(p99[0]["value"][1])
    assert math.isfinite(value) and value > 0, p99

    # Every dashboard query is valid PromQL for this Prometheus, and every alert rule evaluates without error.
    for expr in dashboard_queries():
        prom.query(expr.replace("$__rate_interval", "1m").replace("$model", ".*"))
    for metric, label in template_variables().values():  # Grafana asks the label-values API for these
        values = httpx.get(f"{prom.url}/api/v1/label/{label}/values", params={"match[]": metric}, timeout=10)
        assert set(values.json()["data"]) == {"reviews", "numbers", "flights", "animals"}, values.text

    def evaluated_rules() -> list[dict[str, Any]]:
        groups = httpx.get(f"{prom.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(not r["lastEvaluation"].startswith("0001") for r in rules) else []

    rules = prom.wait_for("alert rule evaluation", evaluated_rules)
    assert {r["name"] for r in rules} >= {"SeqserveHighErrorRate", "SeqserveHighLatencyP99", "SeqserveQueueRejecting"}
    assert all(r["health"] == "ok" for r in rules), json.dumps(rules, indent=1)
    firing = [r["name"] for r in rules if r["state"] != "inactive"]
    assert firing == [], f"a healthy service should raise no alert: {firing}"
