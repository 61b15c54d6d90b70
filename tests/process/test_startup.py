"""How castord starts: its fork server is forked from the master before APP loads,
imports beaver-db only for an APP that does, and falls back to multiprocess's own
new interpreter when the master already has a thread. No timing targets here
(benchmarks/bench_castord.py measures the start); only what each way must do."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.process.leftovers import in_session
from tests.process.test_castord import CASTORD, Castord, daemons  # noqa: F401, F811 - fixture

BEAVER_APP = '''
import os
import sys
import castor
from beaver import BeaverDB

manager = castor.Manager(BeaverDB(os.environ["CASTOR_TEST_DB"]))

@manager.task(mode="process", name="add")
def add(a, b):
    return a + b

@manager.task(mode="thread", name="tadd")
def tadd(a, b):
    return a + b
'''

# The first process to import it (the master) takes a while: signals sent then
# arrive while castord loads APP.
SLOW_APP = """
import os, time
import castor

_marker = os.environ["CASTOR_TEST_MARKER"]
_first = not os.path.exists(_marker)
with open(_marker, "a") as f:
    f.write(f"{os.getpid()}\\n")
if _first:
    time.sleep(1.5)

manager = castor.Manager(os.environ["CASTOR_TEST_DB"])

@manager.task(mode="process", name="add")
def add(a, b):
    return a + b
"""

# Started from sitecustomize (PYTHONPATH), before castord runs any code of its own:
# the master has a thread when castord starts its fork server.
THREAD_AT_STARTUP = '''
import threading
threading.Thread(target=threading.Event().wait, daemon=True, name="sitecustomize-idler").start()
'''


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            kids += [int(k) for k in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    except OSError:
        pass
    return kids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _fork_server(master: int) -> tuple[int, str]:
    """The master's child that is not one of its workers: (pid, command line)."""
    def find() -> tuple[int, str] | None:
        for kid in _children(master):
            line = _cmdline(kid)
            if "process-worker" not in line and "thread-host" not in line:
                return kid, line
        return None
    return wait_until(find, 10, "castord's fork server")  # type: ignore[return-value]


def _maps_numpy(pid: int) -> bool:
    """Whether numpy (imported by beaver-db) is loaded in that process."""
    return "_multiarray_umath" in Path(f"/proc/{pid}/maps").read_text()


def _maps_libpq(pid: int) -> bool:
    """Whether libpq (imported with castor's PostgreSQL store, through psycopg) is loaded."""
    return "libpq" in Path(f"/proc/{pid}/maps").read_text()


def _run(d: Castord, app_dir: Path, app: str = "testapp:manager", env: dict[str, str] | None = None,
         module: str = "testapp") -> int:
    """Start castord, wait for READY and one process and one thread task; the fork server's pid."""
    d.start(app=app, env=env)
    d.wait_note("READY=1")
    server, _ = _fork_server(d.pid)
    sys.modules.pop(module, None)
    mod = importlib.import_module(module)
    try:
        assert mod.add.delay(1, 2).join(timeout=30) == 3
        assert mod.tadd.delay(2, 3).join(timeout=30) == 5
    finally:
        on_file = not mod.manager.store.url.startswith("postgresql")
        db = mod.manager.db if on_file else None  # PostgreSQL: no beaver-db file
        mod.manager.close()
        if db is not None:
            db.close()  # the app's BeaverDB (or the one .db opened for a path)
        sys.modules.pop(module, None)
    return server


@pytest.mark.timeout(60)
def test_the_fork_server_is_castords_own_fork_and_skips_beaver_for_a_path_app(daemons, app_dir):  # noqa: F811 - the fixture
    d = daemons()
    server = _run(d, app_dir)
    line = _cmdline(server)
    assert line.startswith("castord: fork server"), line
    assert not _maps_numpy(server), "a Manager on a path needs no beaver-db in the children"
    assert not _maps_libpq(server), "nor the PostgreSQL store"
    assert len(os.listdir(f"/proc/{server}/task")) == 1  # it forks the children: no thread
    assert not _maps_numpy(d.pid)
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    assert in_session(d.pid) == []


@pytest.mark.timeout(60)
def test_the_fork_server_preloads_beaver_for_an_app_on_a_beaverdb(daemons, app_dir):  # noqa: F811 - the fixture
    (app_dir / "beaverapp.py").write_text(textwrap.dedent(BEAVER_APP))
    d = daemons()
    server = _run(d, app_dir, app="beaverapp:manager", module="beaverapp")
    assert _cmdline(server).startswith("castord: fork server")
    assert _maps_numpy(server), "the fork server should have imported beaver-db beside the master"
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    assert in_session(d.pid) == []


@pytest.mark.timeout(60)
def test_the_fork_server_preloads_the_postgresql_store_for_an_app_on_a_url(daemons, app_dir, postgres_db_url,  # noqa: F811 - the fixture
                                                                            monkeypatch):
    """So that no child (nor a crashed child's replacement) imports psycopg again."""
    monkeypatch.setenv("CASTOR_TEST_DB", postgres_db_url)  # testapp's Manager, here and in castord
    d = daemons()
    server = _run(d, app_dir, env={"CASTOR_TEST_DB": postgres_db_url})
    assert _cmdline(server).startswith("castord: fork server")
    assert _maps_libpq(server), "the fork server should have imported the PostgreSQL store beside the master"
    assert not _maps_numpy(server), "an APP on a URL needs no beaver-db in the children"
    assert len(os.listdir(f"/proc/{server}/task")) == 1  # it forks the children: no thread
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    assert in_session(d.pid) == []


@pytest.mark.timeout(60)
def test_a_master_with_a_thread_falls_back_to_a_new_interpreter(daemons, app_dir):  # noqa: F811 - the fixture
    site = app_dir / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(THREAD_AT_STARTUP)
    d = daemons()
    pythonpath = os.pathsep.join([str(site), str(app_dir), str(Path(__file__).resolve().parents[2])])
    server = _run(d, app_dir, env={"PYTHONPATH": pythonpath})
    assert "multiprocess.forkserver" in _cmdline(server)  # multiprocess's own, as before
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    assert in_session(d.pid) == []


@pytest.mark.timeout(60)
def test_a_start_that_fails_leaves_no_fork_server_behind(app_dir):
    (app_dir / "broken.py").write_text("raise RuntimeError('no app today')\n")
    proc = subprocess.Popen([CASTORD, "start", "broken:manager", "--log-format", "json"], cwd=app_dir,
                            env={**os.environ, "PYTHONPATH": str(app_dir)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 3
        assert b"no app today" in err
        # Gone with castord, not still importing in the background.
        assert in_session(proc.pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(60)
def test_signals_while_app_loads_are_recorded_not_fatal(daemons, app_dir):  # noqa: F811 - the fixture
    (app_dir / "slowapp.py").write_text(textwrap.dedent(SLOW_APP))
    marker = app_dir / "imported.marker"
    d = daemons()
    d.start("--threads", "0", app="slowapp:manager", env={"CASTOR_TEST_MARKER": str(marker)})
    wait_until(marker.exists, 15, "the master to begin importing APP")
    for signum in (signal.SIGUSR1, signal.SIGHUP):  # their default actions end a process
        d.signal(signum)
    d.wait_note("READY=1")
    for name in ("SIGUSR1", "SIGHUP"):
        d.wait_event("castord.signal", signal=name)
    d.wait_event("castord.reloading")
    assert d.proc is not None and d.proc.poll() is None
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    assert in_session(d.pid) == []
