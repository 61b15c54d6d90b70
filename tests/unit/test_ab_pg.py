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


@pytest.mark.timeout(600)
def test_producer_too_runs_each_trees_producer_in_a_process_of_its_own(postgres_url: str) -> None:
    """The same tree as A and B, a few rounds: both runs give figures (a tree whose
    compare_pg cannot run the workload fails the script with its error)."""
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ab_pg.py"), str(REPO), "--only", "latency",
                             "--latency-n", "3", "--pairs", "1", "--producer-too"],
                            capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [row for row in result.stdout.splitlines() if row.startswith("enqueue->result p50 ms")]
    a, b = (float(v) for v in line.split()[3:5])
    assert a > 0 and b > 0
