"""docker-compose.yml against the compose-spec schema, and the image files against what the build needs."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from service.settings import Settings
from tests.deploy.conftest import ROOT, VENV_BIN, tool

COMPOSE = ROOT / "docker-compose.yml"


def check_compose_spec(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("check-jsonschema", VENV_BIN), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=60)


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_spec() -> None:
    result = check_compose_spec(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_an_invalid_compose_file(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["seqserve"]["prots"] = ["8000:8000"]  # a typo the spec forbids
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = check_compose_spec(path)
    assert result.returncode != 0
    assert "prots" in result.stdout + result.stderr


def test_services_profiles_and_mounted_files() -> None:
    services = compose()["services"]
    assert {"seqserve", "prometheus", "grafana", "locust-master", "locust-worker"} <= set(services)
    for name, service in services.items():
        expected = ["loadtest"] if name.startswith("locust") else None
        assert service.get("profiles") == expected, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and name != "seqserve":  # seqserve's ./model_repository is the user's
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
    assert "--host http://seqserve:8000" in services["locust-master"]["command"]
    for name in ("locust-master", "locust-worker"):
        locust = services[name]
        assert "-f /mnt/seqserve/loadtest/locustfile.py" in locust["command"]
        assert "./loadtest:/mnt/seqserve/loadtest:ro" in locust["volumes"]
        for kind in ("CLASSIFY", "TRANSLATE"):  # files that `make loadtest-texts` writes into the mounted folder
            assert locust["environment"][f"SEQSERVE_{kind}_TEXTS_FILE"] == \
                f"/mnt/seqserve/loadtest/texts/{kind.lower()}.txt"
    assert (ROOT / "loadtest" / "locustfile.py").is_file()


def test_seqserve_environment_is_valid_settings_and_stop_covers_the_drain() -> None:
    service = compose()["services"]["seqserve"]
    env = service["environment"]
    assert all(key.startswith("SEQSERVE_") for key in env)
    settings = Settings(**{key.removeprefix("SEQSERVE_").lower(): value for key, value in env.items()})
    grace = int(re.fullmatch(r"(\d+)s", service["stop_grace_period"]).group(1))  # type: ignore[union-attr]
    assert grace > settings.drain_timeout_s
    assert any("/v2/health/ready" in part for part in service["healthcheck"]["test"])


def dockerignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_contract(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)
    runtime = stages[-1]
    assert len(stages) >= 3, "multi-stage: a build stage and a runtime stage"
    assert re.search(r"^USER (\d+)", runtime, re.M) and not re.search(r"^USER (0|root)\b", runtime, re.M)
    assert re.search(r"^HEALTHCHECK .*/v2/health/ready", runtime, re.M | re.S)
    assert 'CMD ["seqserve", "serve", "--host", "0.0.0.0"]' in runtime
    assert "SEQSERVE_MODEL_REPOSITORY=/models" in runtime
    assert '-c constraints-serve.txt ".[serve]"' in text and "torch" not in text.replace("no torch", "")
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert {".venv", "runs"} <= set(patterns)
    for line in re.findall(r"^COPY (?!--from)(.*)$", text, re.M):
        sources = [s for s in line.split()[:-1] if not s.startswith("--")]
        for source in sources:
            assert not dockerignored(source.rstrip("/"), patterns), f"{dockerfile} copies {source}, which is ignored"
            if source != "model_repository/":  # the demo models may not be built yet
                assert (ROOT / source).exists(), f"{dockerfile} copies {source}, which does not exist"


def test_the_image_pins_what_the_tests_run_with() -> None:
    """constraints-serve.txt pins the serve extra's whole closure; `make setup` installed the tests' venv with it,
    so every pinned package here has exactly that version (a mismatch: run `make constraints`, then the tests)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints-serve.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    serve = [Requirement(r) for r in metadata.requires("seqserve") or []]
    needed = {canonicalize_name(r.name) for r in serve
              if r.marker is None or r.marker.evaluate({"extra": "serve"})}
    assert needed and needed <= set(pins), f"not pinned: {needed - set(pins)}"
    assert "torch" not in pins
    installed = {name: metadata.version(name) for name in pins}
    assert installed == pins, {n: (installed[n], v) for n, v in pins.items() if installed[n] != v}
