"""examples/features.py, the runnable companion of docs/tasks.md, runs as documented."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.timeout(60)
def test_features_example_runs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "examples.features", str(tmp_path / "f.db")], cwd=REPO,
                         capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines())
    assert lines["retries"].strip().startswith("200 from https://example.com after 3 attempts")
    assert lines["cancel"].strip() == "cancelled"
    assert lines["unique"].strip() == "same task 7"
    assert lines["cache"].strip() == "same task"
    assert "width: Input should be a valid integer" in lines["validation"]
    assert lines["failed"].strip() == "ValueError('bad input') listed: True"
    assert lines["purged"].strip() == "3 successes"
