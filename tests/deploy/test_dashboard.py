"""The Grafana dashboard and the alert rules query only series that a running service exports."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import yaml

from tests.deploy.conftest import (
    DEPLOY,
    alert_queries,
    dashboard_queries,
    exercise,
    exported_series,
    template_variables,
)

METRIC = re.compile(r"\b(seqserve_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b(seqserve_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
PROMETHEUS_LABELS = {"le", "instance", "job", "deployment"}  # added at scrape time (deployment: prometheus.yml)


def test_dashboard_and_alerts_use_only_exported_metrics_and_labels(make_server: Any) -> None:
    server = make_server()
    exercise(server.url)
    exported = exported_series(httpx.get(f"{server.url}/metrics", timeout=10).text)
    known_labels = set().union(*exported.values()) | PROMETHEUS_LABELS

    queries = {"dashboard": dashboard_queries(), "alerts": alert_queries()}
    assert len(queries["dashboard"]) >= 20 and len(queries["alerts"]) >= 5
    used: set[str] = set()
    for source, exprs in queries.items():
        for expr in exprs:
            names = METRIC.findall(expr)
            assert names or expr.startswith("up{"), f"{source}: {expr!r} queries no seqserve metric"
            for name in names:
                assert name in exported, f"{source} queries {name}, which the service does not export"
            for name, matchers in SELECTOR.findall(expr):
                for label in MATCHER.findall(matchers):
                    assert label in exported[name] | PROMETHEUS_LABELS, f"{source}: {name} has no label {label!r}"
            for grouping in GROUPING.findall(expr):
                for label in filter(None, (g.strip() for g in grouping.split(","))):
                    assert label in known_labels, f"{source}: no exported series has the label {label!r}: {expr}"
            used.update(names)
    variables = template_variables()
    assert "model" in variables
    for variable, (name, label) in variables.items():
        assert label in exported.get(name, set()), f"dashboard variable {variable}: {name} has no label {label!r}"
    # The dashboard covers what the issue asks for: requests, latency, batches, queue, rejections, translation.
    for name in ("seqserve_requests_total", "seqserve_request_duration_seconds_bucket", "seqserve_batch_size_sum",
                 "seqserve_queue_depth", "seqserve_rejections_total", "seqserve_active_sequences",
                 "seqserve_generated_tokens_total", "seqserve_cache_hits_total", "seqserve_cache_misses_total"):
        assert name in used, f"nothing shows {name}"


def test_the_name_check_would_catch_a_wrong_suffix() -> None:
    exported = exported_series("# HELP x_seconds h\n# TYPE x_seconds histogram\n"
                               "# HELP y c\n# TYPE y counter\ny_total{a=\"1\"} 2.0\n")
    assert {"x_seconds_bucket", "x_seconds_sum", "x_seconds_count", "y_total"} <= set(exported)
    assert "x_seconds" not in exported and "y" not in exported and "x_seconds_total" not in exported
    assert exported["y_total"] == {"a"}


def test_grafana_provisioning_points_at_the_dashboard_and_datasource() -> None:
    grafana = DEPLOY / "grafana"
    (datasource,) = yaml.safe_load((grafana / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    (provider,) = yaml.safe_load((grafana / "provisioning/dashboards/seqserve.yml").read_text())["providers"]
    dashboard = json.loads((grafana / "dashboards/seqserve.json").read_text())
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in compose["services"]["grafana"]["volumes"]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {datasource["uid"]}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
