"""Deploy tests: the real tools (promtool, prometheus, check-jsonschema, kubernetes-validate, Chromium) on the
project's deployment files, and live servers from the service fixtures."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent
SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                   "gauge": ("",), "summary": ("", "_sum", "_count", "_created")}


def tool(name: str, where: Path | None = None) -> str:
    """The path of a command-line tool; a missing one fails the test (`make test-deps` installs them)."""
    path = shutil.which(name, path=str(where)) if where else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found{f' in {where}' if where else ''}: run `make test-deps` (or `make setup`)")
    return path


def exported_series(metrics_text: str) -> dict[str, set[str]]:
    """Sample name -> label names, as a Prometheus server would store them from this exposition.

    A labelled metric with no children yet shows only its HELP/TYPE lines; its sample names follow from the type.
    """
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for suffix in SAMPLE_SUFFIXES.get(family.type, ("",)):
            series.setdefault(family.name + suffix, set())
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def exercise(url: str) -> None:
    """One classification (twice: the second from the response cache), one translation with attention, and one
    request refused by its deadline."""
    for _ in range(2):
        ok = httpx.post(f"{url}/v1/classify", json={"model": "reviews", "texts": ["a great film"]}, timeout=30)
        assert ok.status_code == 200, ok.text
    ok = httpx.post(f"{url}/v1/translate", json={"model": "numbers", "texts": ["two five"], "beam_size": 2,
                                                 "return_attention": True}, timeout=30)
    assert ok.status_code == 200, ok.text
    late = httpx.post(f"{url}/v1/classify", json={"model": "reviews", "texts": ["late"]},
                      headers={"X-Timeout-Ms": "0.001"}, timeout=30)
    assert late.status_code == 504, f"a 1 µs deadline should be refused with 504, got {late.status_code}: {late.text}"


def dashboard() -> dict[str, Any]:
    return dict(json.loads((DEPLOY / "grafana" / "dashboards" / "seqserve.json").read_text()))


def dashboard_queries() -> list[str]:
    """Every PromQL expression in the Grafana dashboard's panels (rows included)."""
    panels = dashboard()["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    exprs += [t["expr"] for p in panels for sub in p.get("panels", []) for t in sub.get("targets", [])]
    return exprs


LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)")


def template_variables() -> dict[str, tuple[str, str]]:
    """Each query variable of the dashboard -> (metric, label) of its Grafana `label_values(metric, label)`."""
    found = {}
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = LABEL_VALUES.fullmatch(query.strip())
            assert match, f"dashboard variable {variable['name']}: expected label_values(metric, label), got {query!r}"
            found[variable["name"]] = (match[1], match[2])
    return found


def alert_queries() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]
