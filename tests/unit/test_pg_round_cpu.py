"""benchmarks/pg_round_cpu.py refuses bad input with one clear line and exit 2, before it
starts a server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("args", "said"), [
    (["--rounds", "10"], "--rounds must be at least 100"),
    (["--runs", "0"], "--runs must be at least 1"),
    (["--rounds", "many"], "argument --rounds: invalid int value: 'many'"),
])
def test_bad_input_is_refused(args: list[str], said: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pg_round_cpu.py"), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert said in result.stderr.splitlines()[-1]
