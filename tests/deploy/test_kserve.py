"""The KServe manifests (deploy/kserve), validated offline against KServe's own schemas for its custom resources
(`tests/deploy/kserve_schema.py`: the OpenAPI models that the `kserve` package, 0.21 in the dev extra, generates from
the CRDs, with the Kubernetes client's models for the core types inside them), then the contracts between the files
and the service's own settings."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from service.settings import Settings
from tests.deploy.conftest import DEPLOY

KSERVE = DEPLOY / "kserve"
ROOT = DEPLOY.parent


def validate(*docs: dict[str, Any]) -> list[list[str]]:
    """Each resource's problems, from the validator in a process of its own."""
    done = subprocess.run([sys.executable, "-m", "tests.deploy.kserve_schema"], input=json.dumps(docs), cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return list(json.loads(done.stdout))


def manifests() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted(KSERVE.glob("*.yaml")):
        (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
        docs[path.name] = doc
    return docs


def test_the_manifests_are_the_expected_resources() -> None:
    kinds = {name: doc["kind"] for name, doc in manifests().items()}
    assert kinds == {"servingruntime.yaml": "ServingRuntime", "inferenceservice.yaml": "InferenceService",
                     "inferenceservice-grpc.yaml": "InferenceService", "canary.yaml": "InferenceService"}


def test_each_manifest_validates_against_kserves_schema() -> None:
    docs = manifests()
    assert dict(zip(docs, validate(*docs.values()), strict=True)) == {name: [] for name in docs}


def test_the_validator_catches_mistakes() -> None:
    """Unknown fields, wrong types, a wrong apiVersion and a missing required field all fail."""
    runtime = manifests()["servingruntime.yaml"]
    isvc = manifests()["inferenceservice.yaml"]
    cases: list[tuple[dict[str, Any], str]] = []

    def broken(doc: dict[str, Any], change: Any, expected: str) -> None:
        copied = copy.deepcopy(doc)
        change(copied)
        cases.append((copied, expected))

    broken(runtime, lambda d: d["spec"].update(protocolVersion=["v2"]), "protocolVersion: not a field")
    broken(runtime, lambda d: d["spec"]["containers"][0].update(args="serve"), "args: expected a list")
    broken(runtime, lambda d: d["spec"]["containers"][0]["readinessProbe"].update(periodSeconds="5"),
           "periodSeconds")
    broken(runtime, lambda d: d["spec"]["containers"][0].pop("name"), "containers[0]")  # a required field
    broken(isvc, lambda d: d.update(apiVersion="serving.kserve.io/v1alpha1"), "apiVersion")
    broken(isvc, lambda d: d["spec"]["predictor"].update(minReplicas="0"), "minReplicas: '0' is not a int")
    broken(isvc, lambda d: d["spec"]["predictor"]["model"].update(ports=[{"name": "h2c", "containerPort": "8081"}]),
           "ports[0]")
    for (_, expected), found in zip(cases, validate(*(doc for doc, _ in cases)), strict=True):
        assert any(expected in problem for problem in found), (expected, found)


def test_the_runtime_serves_what_the_inference_services_ask_for() -> None:
    docs = manifests()
    runtime = docs["servingruntime.yaml"]
    spec = runtime["spec"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"  # where KServe mounts the model and points its probes
    formats = {f["name"] for f in spec["supportedModelFormats"]}
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"][1:])
    assert container["command"] == ["seqserve"] and container["args"][0] == "serve"
    assert args["model-repository"] == "/mnt/models"  # where KServe's storage initializer puts storageUri
    settings = Settings(**{k.replace("-", "_"): v for k, v in args.items()}, **{  # type: ignore[arg-type]
        e["name"].removeprefix("SEQSERVE_").lower(): e["value"] for e in container["env"]})
    assert settings.port == 8080 and settings.grpc_port == 8081 and settings.log_format == "json"
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == settings.port
    for name in ("inferenceservice.yaml", "inferenceservice-grpc.yaml", "canary.yaml"):
        predictor = docs[name]["spec"]["predictor"]
        model = predictor["model"]
        assert model["runtime"] == runtime["metadata"]["name"] and model["modelFormat"]["name"] in formats, name
        assert model["protocolVersion"] in spec["protocolVersions"], name
        assert predictor["minReplicas"] <= predictor["maxReplicas"], name
        if model["protocolVersion"] == "grpc-v2":
            assert [(p["name"], p["containerPort"]) for p in model["ports"]] == [("h2c", settings.grpc_port)]
    assert docs["inferenceservice.yaml"]["spec"]["predictor"]["minReplicas"] == 0  # scale to zero
    canary = docs["canary.yaml"]
    assert canary["metadata"]["name"] == docs["inferenceservice.yaml"]["metadata"]["name"]  # applied over it
    assert 0 < canary["spec"]["predictor"]["canaryTrafficPercent"] < 100
    assert canary["spec"]["predictor"]["model"]["storageUri"] != \
        docs["inferenceservice.yaml"]["spec"]["predictor"]["model"]["storageUri"]


def test_the_readme_and_deploy_docs_point_at_the_manifests() -> None:
    docs = (Path(DEPLOY).parent / "docs" / "deploy.md").read_text()
    for name in manifests():
        assert f"deploy/kserve/{name}" in docs, name
