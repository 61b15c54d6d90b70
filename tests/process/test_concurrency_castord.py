"""A concurrency limit holds across a fleet: two castords (three process workers each)
drain a task name limited to 2 running at once, and one limited to 2 per customer; each
task writes its start and end to a log, and no moment of those intervals had more than 2
of the name (or of one customer) running. On the beaver file (two castords on one host)
and on PostgreSQL.

A task's interval lies inside its hold on the slot (claimed before it starts, settled
after it ends), so an overlap of 3 in the log would be a limit broken. What is asserted
is what happened, never how fast."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

from tests.conftest import wait_until
from tests.process.test_castord import daemons, run_cli  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(180)

LIMIT, TASKS, CUSTOMERS = 2, 30, ("a", "b", "c")

APP = f'''
import os
import time
import castor

manager = castor.Manager(os.environ["CASTOR_TEST_DB"])
LOG = os.environ["CASTOR_TEST_LOG"]


def _log(what, n, group):
    # One write per line, O_APPEND: lines of several processes never interleave.
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{{what}} {{n}} {{group}} {{time.monotonic()!r}}\\n".encode())
    finally:
        os.close(fd)


def _run(n, group):
    _log("start", n, group)
    time.sleep(0.05)
    _log("end", n, group)
    return os.environ["CASTOR_TEST_WHO"]


@manager.task(mode="process", name="capped", concurrency={LIMIT})
def capped(n):
    return _run(n, "capped")


@manager.task(mode="process", name="keyed", concurrency={LIMIT}, concurrency_key="customer")
def keyed(n, customer):
    return _run(n, "keyed:" + customer)
'''


def most_at_once(log: str) -> dict[str, int]:
    """Per group, the most tasks whose [start, end] intervals overlapped at one moment."""
    events: dict[str, list[tuple[float, int]]] = {}
    for line in log.splitlines():
        what, _n, group, at = line.split()
        # An end sorts before a start at the same instant: touching is not overlapping.
        events.setdefault(group, []).append((float(at), 1 if what == "start" else -1))
    most = {}
    for group, marks in events.items():
        running = peak = 0
        for _at, step in sorted(marks):
            running += step
            peak = max(peak, running)
        most[group] = peak
    return most


def test_the_overlap_count_sees_three_at_once():
    log = "start 1 g 1.0\nstart 2 g 1.5\nend 1 g 2.0\nstart 3 g 1.8\nend 2 g 3.0\nend 3 g 3.0\nstart 4 g 3.0\nend 4 g 4\n"
    assert most_at_once(log) == {"g": 3}


def _drain_within_the_limit(daemons, app_dir):  # noqa: F811
    (app_dir / "ccapp.py").write_text(textwrap.dedent(APP))
    log = app_dir / "intervals.log"
    os.environ["CASTOR_TEST_LOG"] = str(log)  # the producer's import reads it too
    sys.modules.pop("ccapp", None)
    import ccapp

    try:
        fleet = [daemons(who).start("--workers", "3", "--threads", "0", "--pidfile", str(app_dir / f"{who}.pid"),
                                    app="ccapp:manager", env={"CASTOR_TEST_WHO": who, "CASTOR_TEST_LOG": str(log)})
                 for who in ("east", "west")]
        for d in fleet:
            d.wait_note("READY=1", timeout=60)
        handles = [ccapp.capped.delay(i) for i in range(TASKS)]
        handles += [ccapp.keyed.delay(i, c) for i in range(TASKS // len(CUSTOMERS)) for c in CUSTOMERS]
        wait_until(lambda: ccapp.manager.count("success") == len(handles), 120, "the limited tasks to drain")
        results = [h.join(timeout=10) for h in handles]
        assert set(results) == {"east", "west"}  # both castords ran them: the limit was shared
        most = most_at_once(log.read_text())
        assert set(most) == {"capped", *(f"keyed:{c}" for c in CUSTOMERS)}
        assert all(peak <= LIMIT for peak in most.values()), most
        assert sum(1 for line in log.read_text().splitlines() if line.startswith("start")) == len(handles)
        assert ccapp.manager.concurrency_limits() == {
            "capped": {"limit": LIMIT, "per_key": False, "running": 0},
            "keyed": {"limit": LIMIT, "per_key": True, "running": 0}}
        pidfile = str(app_dir / "east.pid")
        report = json.loads(run_cli(app_dir, "status", "--pidfile", pidfile, "--json").stdout)
        assert report["concurrency_limits"]["capped"] == {"limit": LIMIT, "per_key": False, "running": 0}
        human = run_cli(app_dir, "status", "--pidfile", pidfile).stdout
        assert (f"concurrency limits: capped 0/{LIMIT} running, keyed 0 running (at most {LIMIT} per key)"
                in human), human
    finally:
        ccapp.manager.close()
        sys.modules.pop("ccapp", None)
        os.environ.pop("CASTOR_TEST_LOG", None)


def test_two_castords_together_keep_to_a_concurrency_limit(daemons, app_dir):  # noqa: F811
    _drain_within_the_limit(daemons, app_dir)


@pytest.mark.postgres
def test_two_castords_together_keep_to_a_concurrency_limit_on_postgresql(daemons, app_dir,  # noqa: F811
                                                                         postgres_db_url, monkeypatch):
    monkeypatch.setenv("CASTOR_TEST_DB", postgres_db_url)
    _drain_within_the_limit(daemons, app_dir)
