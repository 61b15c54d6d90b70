"""tests/process/leftovers.py's kill_together: none of the processes killed acts on
another's death (as a castord master would, requeueing a dead child's task)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.process.leftovers import alive, kill_together

# A parent that writes a file as soon as its child dies, and prints both pids.
WATCHER = textwrap.dedent("""
    import os, signal, sys, time
    child = os.fork()
    if child == 0:
        while True:
            time.sleep(1)
    def died(*_):
        with open(sys.argv[1], "w") as f:
            f.write("saw my child die")
        os._exit(0)
    signal.signal(signal.SIGCHLD, died)
    print(os.getpid(), child, flush=True)
    while True:
        time.sleep(1)
""")


def start_watcher(tmp_path: Path) -> tuple[subprocess.Popen[str], int, int, Path]:
    said = tmp_path / "said"
    proc = subprocess.Popen([sys.executable, "-c", WATCHER, str(said)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    parent, child = map(int, proc.stdout.readline().split())
    return proc, parent, child, said


@pytest.mark.timeout(60)
def test_a_parent_killed_with_its_child_never_sees_the_child_die(tmp_path: Path) -> None:
    proc, parent, child, said = start_watcher(tmp_path)
    try:
        kill_together({child, parent})
        assert proc.wait(timeout=30) == -signal.SIGKILL
        wait_until(lambda: not alive(child), 30, "the child to end")
        assert not said.exists(), "the parent ran after its child died"
    finally:
        for pid in (child, parent):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.timeout(60)
def test_the_watcher_does_react_when_the_child_dies_first(tmp_path: Path) -> None:
    """The control: killed one by one, child first, the parent has its moment."""
    proc, parent, child, said = start_watcher(tmp_path)
    try:
        os.kill(child, signal.SIGKILL)
        assert proc.wait(timeout=30) == 0
        assert said.read_text() == "saw my child die"
    finally:
        for pid in (child, parent):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
