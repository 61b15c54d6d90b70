"""benchmarks/ab_pg.py refuses bad input with one clear line and exit 2, before it starts
a server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("args", "said"), [
    (["/nonexistent"], "/nonexistent is not a castor tree"),
    ([str(REPO), "--only", "enqueue"], "--only: unknown workload(s) enqueue; choose from drain, latency"),
    ([str(REPO), "--pairs", "0"], "--pairs must be at least 1"),
])
def test_bad_input_is_refused(args: list[str], said: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ab_pg.py"), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert said in result.stderr.splitlines()[-1]
