"""The Kubernetes manifests as kustomize renders them (kubectl from the dev extra), validated offline against
their schemas (kubernetes-validate), and the contracts between them."""

from __future__ import annotations

import copy
import functools
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings
from tests.deploy.conftest import DEPLOY, VENV_BIN, tool

K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OPERATOR = K8S / "overlays" / "prometheus-operator"
KUBERNETES_VERSION = "1.30"  # the oldest minor still supported upstream when these manifests were written


def kustomization(folder: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((folder / "kustomization.yaml").read_text()))


@functools.cache
def rendered(folder: Path) -> tuple[dict[str, Any], ...]:
    """What `kubectl apply -k FOLDER` would send: the resources as kustomize builds them."""
    out = subprocess.run([tool("kubectl", VENV_BIN), "kustomize", str(folder)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {folder.relative_to(DEPLOY)} failed: {out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def base_resources() -> dict[str, dict[str, Any]]:
    """Kind -> resource, from the rendered base (one resource of each kind); a copy the test may change."""
    return {doc["kind"]: copy.deepcopy(doc) for doc in rendered(BASE)}


def test_every_manifest_is_listed_and_both_kustomizations_build() -> None:
    listed = set(kustomization(BASE)["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert len(rendered(BASE)) == len(base_resources())
    assert set(base_resources()) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                                     "ConfigMap"}
    overlay = {d["kind"]: d for d in rendered(OPERATOR)}
    assert set(overlay) == set(base_resources()) | {"ServiceMonitor"}
    assert all(overlay[kind] == doc for kind, doc in base_resources().items())  # the overlay only adds


def test_the_hpa_owns_the_replica_count() -> None:
    assert "replicas" not in base_resources()["Deployment"]["spec"]  # `kubectl apply` would reset the HPA's count
    assert base_resources()["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2  # the PDB keeps one up


@pytest.mark.parametrize("kind", ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                                  "ConfigMap"])
def test_manifest_matches_the_kubernetes_schema(kind: str) -> None:
    kubernetes_validate.validate(base_resources()[kind], KUBERNETES_VERSION, strict=True)


def test_the_schema_check_rejects_a_wrong_field() -> None:
    deployment = base_resources()["Deployment"]
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGet"]["prot"] = 8000  # a typo that strict validation refuses
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_servicemonitor_is_a_crd_with_no_bundled_schema_so_it_is_checked_by_hand() -> None:
    """ServiceMonitor belongs to the Prometheus Operator's CRDs, which kubernetes-validate does not ship: it lives in
    an optional overlay and is checked here against the Service it must select."""
    monitor = next(d for d in rendered(OPERATOR) if d["kind"] == "ServiceMonitor")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(monitor, KUBERNETES_VERSION, strict=True)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = base_resources()["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_probes_ports_selectors_and_scraping_agree() -> None:
    resources = base_resources()
    deployment, service = resources["Deployment"], resources["Service"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert ports["http"] == int(resources["ConfigMap"]["data"]["SEQSERVE_PORT"])
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["http"])
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert container["envFrom"] == [{"configMapRef": {"name": resources["ConfigMap"]["metadata"]["name"]}}]
    labels = pod["metadata"]["labels"]
    for selector in (deployment["spec"]["selector"]["matchLabels"], service["spec"]["selector"],
                     resources["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    target = resources["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert container["resources"]["requests"]["cpu"], "the HPA's CPU utilisation is relative to the request"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_grace_period_covers_the_pre_stop_wait_and_the_drain() -> None:
    resources = base_resources()
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    settings = Settings(**{k.removeprefix("SEQSERVE_").lower(): v for k, v in resources["ConfigMap"]["data"].items()})
    command = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(command[1]) + settings.drain_timeout_s
    assert settings.drain_timeout_s > 0, "the server drains on SIGTERM only within this bound"
