"""Schemathesis against the live /openapi.json: every operation, a fixed budget and seed, zero server
errors and zero responses that break the documented schema."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.fixtures import ProcessServer

BIN = Path(sys.executable).parent
CONFIG = """
[parameters]
"path.name" = "reviews"
"path.number" = 1
"""


def test_schemathesis_finds_no_server_errors_or_schema_violations(repo, tmp_path):
    server = ProcessServer(repo, tmp_path / "server.log", enable_model_control="true")
    (tmp_path / "schemathesis.toml").write_text(CONFIG, encoding="utf-8")
    try:
        result = subprocess.run(
            [str(BIN / "schemathesis"), "--config-file", str(tmp_path / "schemathesis.toml"), "run",
             f"{server.url}/openapi.json", "--checks",
             "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
             "--max-examples", "15", "--seed", "20261122", "--workers", "1", "--generation-database", "none",
             "--no-color", "--request-timeout", "30"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    finally:
        assert server.stop() == 0
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    assert selected and selected.group(1) == selected.group(2)  # every operation in the schema
    cases = re.search(r"(\d+) generated, (\d+) passed", output)
    assert cases and cases.group(1) == cases.group(2) and int(cases.group(1)) > 200, output[-2000:]
    print(f"schemathesis: {cases.group(1)} cases, all passed")
