"""The Kubernetes manifests: schema validation offline (kubernetes-validate) and the contracts between them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings
from tests.deploy.conftest import DEPLOY

K8S = DEPLOY / "k8s"
OPERATOR = K8S / "overlays" / "prometheus-operator"
KUBERNETES_VERSION = "1.30"  # the oldest minor still supported upstream when these manifests were written


def kustomization(folder: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((folder / "kustomization.yaml").read_text()))


def base_resources() -> dict[str, dict[str, Any]]:
    """Kind -> resource, for the files the base kustomization lists (each file holds one resource)."""
    docs = [yaml.safe_load((K8S / name).read_text()) for name in kustomization(K8S)["resources"]]
    return {doc["kind"]: doc for doc in docs}


def config_map() -> dict[str, Any]:
    """The ConfigMap that the kustomization's configMapGenerator makes from its env file."""
    (generator,) = kustomization(K8S)["configMapGenerator"]
    data = {}
    for env_file in generator["envs"]:
        for line in (K8S / env_file).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, value = line.split("=", 1)
                data[key] = value
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}


def test_every_manifest_is_listed_and_exists() -> None:
    listed = set(kustomization(K8S)["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert kustomization(OPERATOR)["resources"] == ["../..", "servicemonitor.yaml"]
    assert set(base_resources()) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}


@pytest.mark.parametrize("kind", ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                                  "ConfigMap"])
def test_manifest_matches_the_kubernetes_schema(kind: str) -> None:
    resource = config_map() if kind == "ConfigMap" else base_resources()[kind]
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_rejects_a_wrong_field() -> None:
    deployment = base_resources()["Deployment"]
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGet"]["prot"] = 8000  # a typo that strict validation refuses
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_servicemonitor_is_a_crd_with_no_bundled_schema_so_it_is_checked_by_hand() -> None:
    """ServiceMonitor belongs to the Prometheus Operator's CRDs, which kubernetes-validate does not ship: it lives in
    an optional overlay and is checked here against the Service it must select."""
    monitor = yaml.safe_load((OPERATOR / "servicemonitor.yaml").read_text())
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(monitor, KUBERNETES_VERSION, strict=True)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = base_resources()["Service"]
    service_labels = {**service["metadata"].get("labels", {}), **kustomization(K8S)["labels"][0]["pairs"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
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
    assert ports["http"] == int(config_map()["data"]["SEQSERVE_PORT"])
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["http"])
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert container["envFrom"] == [{"configMapRef": {"name": config_map()["metadata"]["name"]}}]
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
    pod = base_resources()["Deployment"]["spec"]["template"]["spec"]
    settings = Settings(**{k.removeprefix("SEQSERVE_").lower(): v for k, v in config_map()["data"].items()})
    command = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(command[1]) + settings.drain_timeout_s
    assert settings.drain_timeout_s > 0, "the server drains on SIGTERM only within this bound"
