"""docs/quickstart.md runs: its main.py and tasks.py, under a real castord."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO

CASTORD = str(Path(sys.executable).parent / "castord")


def python_blocks(path: Path) -> dict[str, str]:
    """The doc's ```python blocks, keyed by the file name in their first comment."""
    blocks = {}
    for block in re.findall(r"```python\n(.*?)```", path.read_text(), re.S):
        first = block.splitlines()[0]
        if first.startswith("# ") and first.endswith(".py"):
            blocks[first[2:]] = block
    return blocks


@pytest.mark.timeout(90)
def test_quickstart_app_runs_under_castord(tmp_path):
    blocks = python_blocks(REPO / "docs" / "quickstart.md")
    db = str(tmp_path / "my_app.db")
    (tmp_path / "main.py").write_text(blocks["main.py"].replace("/var/data/my_app.db", db))
    (tmp_path / "tasks.py").write_text(blocks["tasks.py"])
    client = textwrap.dedent('''
        from tasks import complex_calculation, process_payment
        from main import db
        task = complex_calculation.delay(10, 20)
        print(task.id, task.status())
        assert task.join(timeout=30) == 30
        assert bool(task) and task.status() == "success"
        assert process_payment.delay("o-1").join(timeout=30)["status"] == "ok"
        assert db.dict("payments")["o-1"] == "paid"
        print("QUICKSTART-OK")
    ''')
    (tmp_path / "client.py").write_text(client)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    daemon = subprocess.Popen([CASTORD, "start", "main:manager", "--workers", "1", "--threads", "2",
                               "--log-format", "json"], cwd=tmp_path, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = subprocess.run([sys.executable, "client.py"], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "QUICKSTART-OK" in result.stdout
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
