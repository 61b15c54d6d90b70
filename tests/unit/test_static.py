"""Static checks on the package: mypy (the public API is typed) and ruff (errors, imports)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.timeout(300)
def test_mypy():
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(120)
def test_ruff():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "castor", "castord", "tests", "benchmarks",
                             "examples"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
