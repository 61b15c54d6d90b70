"""The `castor` command's dashboard, for real: castor runs on a pseudo-terminal,
a terminal emulator (pyte) reads what it draws, and Ctrl+C is the byte a
keyboard sends (0x03), which the terminal turns into SIGINT for castor's
process group."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyte
import pytest

from tests.conftest import REPO, wait_until

CASTOR = str(Path(sys.executable).parent / "castor")
ROWS, COLUMNS = 45, 120

DASHAPP = '''
import castor
from testapp import manager

@manager.task(mode="process", name="shout")
def shout(words):
    print(words)  # captured into the log, shown in the log panel
    return words
'''

# Make the pseudo-terminal castor's controlling terminal, so that 0x03 sends
# SIGINT to castor's process group, as a keyboard's Ctrl+C does.
TAKE_TERMINAL = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                 "os.execv(sys.argv[1], sys.argv[1:])")


class Terminal:
    """castor on a pseudo-terminal; `screen()` is what a user would see."""

    def __init__(self, app_dir: Path, *args: str):
        import fcntl
        import struct
        import termios

        self.screen_ = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen_)
        self.lock = threading.Lock()
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        env = {**os.environ, "PYTHONPATH": f"{app_dir}{os.pathsep}{REPO}", "TERM": "xterm-256color",
               "TMPDIR": str(app_dir), "COLUMNS": str(COLUMNS), "LINES": str(ROWS)}
        env.pop("NO_COLOR", None)
        self.proc = subprocess.Popen([sys.executable, "-c", TAKE_TERMINAL, CASTOR, *args], cwd=app_dir,
                                     env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the terminal has closed it
                return
            if not data:
                return
            with self.lock:
                self.stream.feed(data)

    def screen(self) -> str:
        with self.lock:
            return "\n".join(self.screen_.display)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            return re.search(pattern, self.screen())
        try:
            return wait_until(found, timeout, f"{pattern!r} on the screen")  # type: ignore[return-value]
        except BaseException:
            print(self.screen())  # shown by pytest when the test fails
            raise

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:  # stop what this test started: castor's own process group
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        os.close(self.master)
        self.reader.join(timeout=5)


@pytest.fixture
def terminal(app_dir):
    (app_dir / "dashapp.py").write_text(DASHAPP)
    # A test importing dashapp gets this directory's (an earlier test's is on its own
    # database, closed since).
    sys.modules.pop("dashapp", None)
    opened: list[Terminal] = []

    def start(*args: str) -> Terminal:
        term = Terminal(app_dir, *args)
        opened.append(term)
        return term

    yield start
    for term in opened:
        term.close()
    sys.modules.pop("dashapp", None)


@pytest.mark.timeout(90)
def test_dashboard_shows_the_work_and_ctrl_c_drains(terminal, app_dir):
    import dashapp
    import testapp

    for n in range(6):
        testapp.add.delay(n, n)
        testapp.tadd.delay(n, n)
    dashapp.shout.delay("hello from inside a task")
    failures = [testapp.boom.delay("on purpose") for _ in range(2)]
    marker = app_dir / "critical.marker"
    critical = testapp.critical.delay(4, str(marker))
    testapp.add.apply_async((1, 2), countdown=3600, queue="later")

    term = terminal("--workers", "2", "--threads", "2", "dashapp:manager")
    term.wait_for(r"castor dashapp:manager\s+pid \d+\s+running")
    term.wait_for(r"done 13\b")
    term.wait_for(r"failed 2\b")
    screen = term.wait_for(r"critical\s+running").string
    assert re.search(r"process slots\s+\S+\s+[12]/2 busy", screen), screen
    assert re.search(r"thread slots\s+\S+\s+0/2 busy", screen), screen
    assert re.search(r"later\s+1\b", screen), screen  # pending per queue
    assert re.search(r"throughput\s+[\d.]+ tasks/s", screen), screen
    assert failures[0].id[-12:] in screen or failures[1].id[-12:] in screen, screen
    assert re.search(r"boom\s+failed", screen), screen
    with term.lock:  # the status cell of a failed task is drawn red, a running one cyan
        rows = term.screen_.display
        y = next(i for i, line in enumerate(rows) if re.search(r"boom\s+failed", line))
        x = rows[y].index("failed")
        assert term.screen_.buffer[y][x].fg == "red"
        y = next(i for i, line in enumerate(rows) if re.search(r"critical\s+running", line))
        assert term.screen_.buffer[y][rows[y].index("running")].fg == "cyan"
    term.wait_for("hello from inside a task")  # the task's print(), in the log panel
    assert "castord.ready" in term.screen()

    term.ctrl_c()
    term.wait_for(r"pid \d+\s+draining")
    term.wait_for("Ctrl\\+C again: stop now")
    assert term.wait_exit(timeout=30) == 0
    term.wait_for(r"castor stopped \(exit 0\)")
    assert critical.status() == "success"  # the running non-daemon task was let finish
    assert critical.join(timeout=1) == "finished"
    [log_file] = app_dir.glob("castor-*.log")  # a temporary file, since no --log-file was given
    with term.lock:
        unwrapped = "".join(term.screen_.display)  # rows are exactly COLUMNS wide
    assert f"Full log: {log_file}" in unwrapped
    assert "hello from inside a task" in log_file.read_text()


@pytest.mark.timeout(90)
def test_a_second_ctrl_c_stops_fast_and_requeues(terminal, app_dir):
    import testapp

    marker = app_dir / "critical.marker"
    critical = testapp.critical.delay(60, str(marker))
    term = terminal("--workers", "1", "--threads", "1", "dashapp:manager")
    term.wait_for(r"critical\s+running")
    term.ctrl_c()
    term.wait_for(r"pid \d+\s+draining")
    started = time.monotonic()
    term.ctrl_c()
    assert term.wait_exit(timeout=20) == 0
    assert time.monotonic() - started < 15
    term.wait_for(r"castor stopped \(exit 0\)")
    assert critical.status() == "pending"  # requeued for the next castor, not lost
    assert critical.info().attempts == 0
