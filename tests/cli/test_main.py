"""The console script's import graph: serving needs no torch, so `seqserve serve` runs from the serve extra."""

import subprocess
import sys

from tests.conftest import ROOT


def test_the_cli_and_the_service_import_without_torch():
    code = ("import sys, cli.main, service.app, service.server; cli.main.build_parser(); "
            "found = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'models')); "
            "print(found); sys.exit(1 if found else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
