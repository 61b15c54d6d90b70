"""PostgreSQL operations (issue 14): castord through pgbouncer in transaction mode, the
connections it holds, and castord outliving a server restart, a crash and a failover to
a replica. Real castords, a real pgbouncer, servers of the test's own (tests/postgres.py,
tests/pg_replica.py) where the test takes them down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import quote, urlsplit

import pytest

import castor
from castor.errors import StoreUnavailable
from tests.conftest import wait_until
from tests.pg_replica import Replica, failover_url, make_synchronous
from tests.pgbouncer import Pgbouncer
from tests.postgres import ThrowawayServer
from tests.process.test_castord import CASTORD, REPO, Castord
from tests.process.test_postgresql_castord import PGAPP, run

# Tasks that say each run in a file (one line per run), short enough that an outage
# lands in the middle of a run of them.
OPSAPP = """
import os, time
import castor

manager = castor.Manager(os.environ["OPSAPP_URL"])


def _ran(i):
    with open(os.environ["OPSAPP_RUNS"], "a") as f:
        f.write(f"{i}\\n")


@manager.task(mode="process", name="step")
def step(i):
    _ran(i)
    time.sleep(0.02)
    return i


@manager.task(mode="thread", name="tstep")
def tstep(i):
    _ran(i)
    time.sleep(0.02)
    return i
"""


def _load(app_dir: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str, env: dict[str, str]) -> ModuleType:
    (app_dir / f"{name}.py").write_text(textwrap.dedent(text))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sys.modules.pop(name, None)
    __import__(name)
    return sys.modules[name]


@pytest.fixture
def app_at(app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., ModuleType]]:
    """app_at(url, ops=False): the PGAPP (or, ops=True, OPSAPP) module on `url`, imported here too."""
    loaded: list[ModuleType] = []

    def load(url: str, *, ops: bool = False) -> ModuleType:
        if ops:
            module = _load(app_dir, monkeypatch, "opsapp", OPSAPP,
                           {"OPSAPP_URL": url, "OPSAPP_RUNS": str(app_dir / "runs.txt")})
        else:
            module = _load(app_dir, monkeypatch, "pgapp", PGAPP, {"PGAPP_URL": url})
        loaded.append(module)
        return module

    yield load
    for module in loaded:
        module.manager.close()
        sys.modules.pop(module.__name__, None)


def dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def backends(postgres, url: str) -> list[tuple[str, bool]]:
    """(application_name, is it a LISTEN) of every other backend on url's database."""
    with postgres.connect(url) as conn:
        return conn.execute(
            "SELECT application_name, query LIKE 'LISTEN %%' FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()


# --- pgbouncer in transaction mode ------------------------------------------------------

def _status(app_dir: Path, app: str) -> dict:
    result = run(app_dir, "status", app, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _run_through(app, d: Castord, app_dir: Path) -> None:
    d.start("--workers", "2", "--threads", "2", app="pgapp:manager")
    d.wait_note("READY=1", timeout=30)
    # Many runs of each statement on each connection: psycopg would prepare them (after
    # 5), which pgbouncer in transaction mode cannot carry from one transaction to the next.
    many = [app.add.delay(i, i) for i in range(200)] + [app.tadd.delay(i, 1) for i in range(200)]
    assert [t.join(timeout=60) for t in many] == [2 * i for i in range(200)] + [i + 1 for i in range(200)]
    with pytest.raises(ValueError, match="boom on postgres"):
        app.boom.delay().join(timeout=30)
    report = _status(app_dir, "pgapp:manager")
    assert report["running"] is True and report["pid"] == d.pid and report["warnings"] == [], report
    assert report["counts"]["success"] == 400 and report["counts"]["failed"] == 1


@pytest.mark.timeout(180)
@pytest.mark.parametrize("listen", ["on the server", "off"])
def test_castord_runs_through_pgbouncer_in_transaction_mode(listen, postgres, postgres_db_url, app_at, app_dir):
    """castor_listen=URL: LISTEN on the server itself, the rest through pgbouncer;
    castor_listen=off: no LISTEN anywhere, waiters poll."""
    with Pgbouncer(postgres.url) as bouncer:
        where = quote(postgres_db_url, safe="") if listen == "on the server" else "off"
        app = app_at(bouncer.url(dbname(postgres_db_url)) + f"&castor_prepare=off&castor_listen={where}")
        d = Castord(app_dir)
        try:
            _run_through(app, d, app_dir)
            listening = [name for name, is_listen in backends(postgres, postgres_db_url) if is_listen]
            assert bool(listening) == (listen == "on the server"), listening
            d.signal(signal.SIGTERM)
            assert d.wait_exit() == 0
        finally:
            d.stop()
        # A LISTEN through pgbouncer would leave its server session subscribed, and
        # pgbouncer would warn at each NOTIFY that it got one "when not linked".
        assert "when not linked" not in bouncer.log()


# --- what castord holds ---------------------------------------------------------------

@pytest.mark.timeout(180)
def test_the_connections_castord_holds(postgres, postgres_db_url, app_at, app_dir):
    """The figures docs/postgresql.md states: the master 1 or 2, plus the castord's one
    LISTEN (relayed to its children: castor/store/pg_relay.py); each child no LISTEN and
    at most 3 others (its loop, its lease keeper, its hand-back thread; a thread host's
    task threads may add theirs)."""
    app = app_at(postgres_db_url)
    d = Castord(app_dir)
    try:
        d.start("--workers", "2", "--threads", "4", app="pgapp:manager")
        d.wait_note("READY=1", timeout=30)
        many = [app.add.delay(i, i) for i in range(300)] + [app.tadd.delay(i, 1) for i in range(300)]
        assert [t.join(timeout=60) for t in many] == [2 * i for i in range(300)] + [i + 1 for i in range(300)]
        report = _status(app_dir, "pgapp:manager")
        roles = {report["pid"]: "master"} | {c["pid"]: c["role"] for c in report["children"]}
        held: dict[int, Counter[bool]] = {pid: Counter() for pid in roles}
        for name, listen in backends(postgres, postgres_db_url):
            pid = int(name.split()[1].split("@")[0]) if name.startswith("castor ") else None
            if pid in held:  # (the test's own connections are not castord's)
                held[pid][listen] += 1
        master = held[report["pid"]]
        assert master[True] == 1 and 1 <= master[False] <= 2, master
        for pid, role in roles.items():
            if role == "master":
                continue
            assert held[pid][True] == 0, (role, held[pid])
            others = 3 if role == "process-worker" else 3 + 4
            assert held[pid][False] <= others, (role, held[pid])
        d.signal(signal.SIGTERM)
        assert d.wait_exit() == 0
    finally:
        d.stop()


# --- the server goes away, and comes back ---------------------------------------------

def _runs(app_dir: Path) -> Counter[int]:
    path = app_dir / "runs.txt"
    return Counter(int(x) for x in path.read_text().split()) if path.exists() else Counter()


def _start_ops(d: Castord) -> None:
    # A short lease (the shortest --heartbeat-timeout 5 allows): a task whose claim or
    # settle a crash lost comes back within it.
    d.start("--workers", "2", "--threads", "2", "--lease", "12", "--heartbeat-timeout", "5", app="opsapp:manager")
    d.wait_note("READY=1", timeout=30)


def _outage(app, d: Castord, app_dir: Path, take_down: Callable[[], None], bring_back: Callable[[], None]) -> None:
    """Tasks flowing; the server taken down; castord says so once per process and waits;
    the server back; every task ends success, none lost."""
    tasks = [app.step.delay(i) if i % 2 else app.tstep.delay(i) for i in range(300)]
    wait_until(lambda: sum(_runs(app_dir).values()) >= 30, 60, "tasks to be running")
    take_down()
    # What a user sees meanwhile: StoreUnavailable, nothing written.
    with pytest.raises(StoreUnavailable):
        app.step.delay(-1)
    # Each child says once that it waits; the master, that its heartbeat row was not written.
    d.wait_event("worker.database_locked", timeout=30, count=3)
    d.wait_event("castord.heartbeat_record_skipped", timeout=30)  # a heartbeat (1 s) later
    assert not d.events("child.database_error"), "children gave up on the database"
    assert d.proc is not None and d.proc.poll() is None, "castord stopped during the outage"
    bring_back()
    assert [t.join(timeout=120) for t in tasks] == list(range(300))
    assert all(t.info().status == castor.TaskStatus.SUCCESS for t in tasks)
    assert app.manager.count() == 300  # and the refused .delay() wrote nothing
    runs = _runs(app_dir)
    assert set(runs) == set(range(300))
    assert d.proc.poll() is None, "castord stopped after the outage"
    d.wait_event("worker.database_available", timeout=30, count=3)
    # One line per process for the outage, not one per try.
    per_pid = Counter(e["pid"] for e in d.events("worker.database_locked"))
    assert sorted(per_pid.values()) == [1, 1, 1], per_pid
    assert len(d.events("castord.heartbeat_record_skipped")) == 1
    assert not d.events("child.database_error") and not d.events("worker.housekeeping_failed")
    assert not d.events("child.exited"), "a child was replaced"
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["fast", "kill"])
def test_castord_waits_out_a_server_restart_and_loses_nothing(how, app_at, app_dir):
    with ThrowawayServer(fsync=False) as server:
        app = app_at(server.url(), ops=True)
        d = Castord(app_dir)
        try:
            _start_ops(d)
            _outage(app, d, app_dir, lambda: server.halt(how), server.resume)
        finally:
            d.stop()


@pytest.mark.timeout(300)
def test_castord_follows_a_failover_to_a_promoted_replica(app_at, app_dir):
    """One URL naming both servers with target_session_attrs=read-write: libpq connects
    only to the one taking writes, so after the primary dies and the replica is promoted
    the same URL reaches the new primary. Replication is synchronous: what .delay()
    committed on the primary is on the replica."""
    with ThrowawayServer(fsync=False) as primary, Replica(primary) as replica:
        make_synchronous(primary)
        app = app_at(failover_url(primary, replica), ops=True)
        d = Castord(app_dir)
        try:
            _start_ops(d)
            _outage(app, d, app_dir, lambda: primary.halt("kill"), replica.promote)
            assert not replica.in_recovery()
        finally:
            d.stop()


# --- start-up with the server down ------------------------------------------------------

@pytest.mark.timeout(120)
def test_castord_start_with_the_server_down_exits_4_so_systemd_tries_again(app_dir, tmp_path):
    """A server that cannot be reached at start is not a broken APP (exit 3, which
    castord@.service does not restart): exit 4, with the store's reason in the log line."""
    with ThrowawayServer(fsync=False) as server:
        url = server.url()
        server.halt("fast")
        (app_dir / "pgapp.py").write_text(PGAPP)
        started = subprocess.run(
            [CASTORD, "start", "pgapp:manager", "--log-format", "json"], cwd=app_dir, capture_output=True,
            text=True, timeout=90, env={**os.environ, "PGAPP_URL": url, "PYTHONPATH": f"{app_dir}{os.pathsep}{REPO}"})
        server.resume()  # for the context manager to stop
    assert started.returncode == 4, started.stderr
    events = [json.loads(line) for line in (started.stdout + started.stderr).splitlines() if line.startswith("{")]
    failed = [e for e in events if e.get("event") == "castord.app_load_failed"]
    assert failed and "cannot connect to PostgreSQL" in json.dumps(failed[0]), events
