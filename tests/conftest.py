"""Shared fixtures: real beaver-db files in tmp dirs, worker processes stopped by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import castor

REPO = Path(__file__).resolve().parent.parent

# PostgreSQL for the tests that need it (fixtures `postgres`, `postgres_url`, `postgres_db_url`).
pytest_plugins = ["tests.postgres"]


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.01) -> object:
    """Poll `predicate` until it is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "app.db")


@pytest.fixture
def manager(db_path: str) -> Iterator[castor.Manager]:
    m = castor.Manager(db_path)
    yield m
    m.close()


APP_TEMPLATE = '''
import os, time
import castor

manager = castor.Manager(os.environ["CASTOR_TEST_DB"])

@manager.task(mode="process", name="add")
def add(a, b):
    return a + b

@manager.task(mode="thread", name="tadd")
def tadd(a, b):
    return a + b

@manager.task(mode="process", name="slow")
def slow(seconds, marker=None):
    if marker:
        open(marker, "a").write(f"{os.getpid()}\\n")
    time.sleep(seconds)
    return seconds

@manager.task(mode="process", name="boom")
def boom(message):
    raise ValueError(message)

def _first_time(marker):
    """True the first time a marker is seen; records the running pid in it."""
    first = not os.path.exists(marker)
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\\n")
    return first

@manager.task(mode="process", name="crash_once")
def crash_once(marker):
    if _first_time(marker):
        time.sleep(120)  # the test kills whoever runs this first
    return "second attempt"

@manager.task(mode="process", name="critical", daemon=False)
def critical(seconds, marker):
    _first_time(marker)
    time.sleep(seconds)
    return "finished"

@manager.task(mode="process", name="expendable", daemon=True)
def expendable(marker):
    if _first_time(marker):
        time.sleep(120)  # a drain stops it; the rerun is quick
    return "rerun"

@manager.task(mode="thread", name="spin")
def spin(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # pure Python: interruptible by TaskTimeout
        pass
    return "never"

@manager.task(mode="thread", name="chatty")
def chatty(message):
    import logging
    logging.getLogger("testapp").warning(message)
    return "logged"

@manager.task(mode="thread", name="version")
def version():
    return 1

@manager.task(mode="process", name="always_fails", retries=2, retry_delay=0.01)
def always_fails(message):
    raise ValueError(message)

@manager.task(mode="process", name="flaky", retries=3, retry_delay=0.01)
def flaky(marker, fails):
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\\n")
    if len(open(marker).read().split()) <= fails:
        raise ConnectionError("not yet")
    return "ok"

@manager.task(mode="process", name="stubborn")
def stubborn(marker):
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(120)  # only a cancel (or a kill) ends it

@manager.task(mode="thread", name="tstubborn")
def tstubborn(marker):
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\\n")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.01)

@manager.task(mode="process", name="reporter")
def reporter(marker):
    castor.progress(0.5, "halfway")
    deadline = time.monotonic() + 60
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    castor.progress(1.0, "done")
    return "reported"

@manager.task(mode="thread", name="note_down")
def note_down(path, n):
    with open(path, "a") as f:
        f.write(f"{n}\\n")
    return n

@manager.task(mode="process", name="quick")
def quick(n):
    return n

@manager.task(mode="process", name="once", unique=True)
def once(path):
    with open(path, "a") as f:
        f.write("ran\\n")
    return "once"

@manager.task(mode="process", name="cached_square", cache_ttl=60)
def cached_square(n):
    return n * n

@manager.task(mode="thread", name="ephemeral", result_ttl=0.5)
def ephemeral(n):
    return n
'''


@pytest.fixture
def app_dir(tmp_path: Path, db_path: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding `testapp.py` (a Manager on db_path with a few tasks)."""
    (tmp_path / "testapp.py").write_text(textwrap.dedent(APP_TEMPLATE))
    monkeypatch.setenv("CASTOR_TEST_DB", db_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("testapp", None)
    yield tmp_path
    module = sys.modules.pop("testapp", None)
    if module is not None:  # a test imported the app: close its Manager
        module.manager.close()


class Processes:
    """Starts processes in their own session and stops exactly those, by pid."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        full_env = {**os.environ, "PYTHONPATH": f"{self.cwd}{os.pathsep}{REPO}", **(env or {})}
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=self.cwd, env=full_env, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def worker(self, app: str = "testapp:manager", *extra: str) -> subprocess.Popen[bytes]:
        return self.start("-m", "castor", app, *extra)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()


@pytest.fixture
def processes(app_dir: Path) -> Iterator[Processes]:
    procs = Processes(app_dir)
    yield procs
    procs.stop_all()
