"""The fleet view for real: two castords on one PostgreSQL store as two hosts.

The second castord runs in a UTS namespace of its own (`unshare --uts`, as root) under
another hostname, so it writes its heartbeat row as another host would; both share
the test's throwaway PostgreSQL. (A fleet across network namespaces, with a host cut
off, is another test's; this one is about what `castord status`, `castord tasks` and
the metrics show of it.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.process.test_castord as castord_tests
from tests.conftest import wait_until
from tests.process.test_castord import Castord, run_cli
from tests.process.test_metrics import scrape
from tests.process.test_postgresql_castord import pg_app  # noqa: F401 - fixture
from tests.tools import unavailable

pytestmark = pytest.mark.timeout(180)

OTHER_HOST = "fleet-b"

FLEETAPP = """
import os, socket, time
from pgapp import add, boom, manager  # noqa: F401 - test_postgresql_castord.py's app, and:


@manager.task(mode="process", name="meet")
def meet(directory):
    # Says which host runs it, then waits until two hosts do and the test lets go.
    open(os.path.join(directory, socket.gethostname()), "w").close()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if len(os.listdir(directory)) >= 2 and os.path.exists(directory + ".go"):
            break
        time.sleep(0.01)
    return socket.gethostname()
"""


@pytest.fixture
def fleet_app(pg_app: Any, app_dir: Path) -> Iterator[Any]:  # noqa: F811
    """`fleetapp:manager`: the PostgreSQL app of test_postgresql_castord.py (its URL in
    PGAPP_URL, for this process and the castords it starts), with a task more."""
    (app_dir / "fleetapp.py").write_text(textwrap.dedent(FLEETAPP))
    sys.modules.pop("fleetapp", None)
    import fleetapp

    yield fleetapp
    sys.modules.pop("fleetapp", None)


def other_host_castord(app_dir: Path) -> Path:
    """An executable that runs castord under the hostname OTHER_HOST (same pid: unshare
    and sh exec into it); to be put in as the Castord helper's CASTORD."""
    if subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode != 0:
        unavailable("cannot make a UTS namespace (unshare --uts needs root) to run a castord as another host")
    wrapper = app_dir / "castord-as-other-host"
    wrapper.write_text(f"#!/bin/sh\nexec unshare --uts -- sh -c 'hostname {OTHER_HOST} && exec \"$0\" \"$@\"' "
                       f"{castord_tests.CASTORD} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def status(app_dir: Path) -> tuple[int, dict, str]:
    machine = run_cli(app_dir, "status", "fleetapp:manager", "--json")
    human = run_cli(app_dir, "status", "fleetapp:manager")
    assert "Traceback" not in machine.stderr + human.stderr, machine.stderr + human.stderr
    assert machine.returncode == human.returncode
    return machine.returncode, json.loads(machine.stdout), human.stdout


def test_status_tasks_and_metrics_show_both_hosts(fleet_app, app_dir, monkeypatch, tmp_path):
    wrapper = other_host_castord(app_dir)
    here = socket.gethostname()
    assert here != OTHER_HOST
    options = ("--workers", "1", "--threads", "0", "--prefetch", "1")
    a, b = Castord(app_dir, "castord-a"), Castord(app_dir, "castord-b")
    try:
        a.start(*options, "--metrics-port", "0", app="fleetapp:manager")
        real = castord_tests.CASTORD
        monkeypatch.setattr(castord_tests, "CASTORD", str(wrapper))  # what Castord.start runs
        b.start(*options, app="fleetapp:manager")
        monkeypatch.setattr(castord_tests, "CASTORD", real)
        a.wait_note("READY=1", timeout=30)
        b.wait_note("READY=1", timeout=30)
        port = a.wait_event("metrics.serving")[0]["port"]

        # One task per castord: each has one process child taking one task at a time,
        # and neither task ends before both run.
        rendezvous = tmp_path / "meet"
        rendezvous.mkdir()
        tasks = [fleet_app.meet.delay(str(rendezvous)) for _ in range(2)]
        wait_until(lambda: len(os.listdir(rendezvous)) == 2, 60, "both hosts to run a task")
        assert sorted(os.listdir(rendezvous)) == sorted([here, OTHER_HOST])

        def both_busy() -> dict | None:
            code, report, _ = status(app_dir)
            busy = {d["host"]: d["busy"] for d in report.get("fleet", [])}
            return report if code == 0 and busy == {here: 1, OTHER_HOST: 1} else None
        report = wait_until(both_busy, 30, "castord status to show both hosts busy", interval=0.2)
        assert report["running"] is True and report["pid"] == a.pid
        entries = {d["host"]: d for d in report["fleet"]}
        assert (entries[here]["pid"], entries[OTHER_HOST]["pid"]) == (a.pid, b.pid)
        assert all((d["state"], d["workers"], d["threads"], d["stale"]) == ("running", 1, 0, False)
                   for d in entries.values())
        _, _, text = status(app_dir)
        assert f"  {OTHER_HOST} pid {b.pid} fleetapp:manager: running, busy 1/1 (1 proc, 0 thr)" in text

        (rendezvous.parent / "meet.go").touch()
        assert sorted(t.join(timeout=60) for t in tasks) == sorted([here, OTHER_HOST])
        for i in range(20):
            fleet_app.add.delay(i, i)
        wait_until(lambda: fleet_app.manager.counts().get("success") == 22, 60, "the adds to finish")

        # Counted store-wide: what both hosts ran.
        stats = run_cli(app_dir, "tasks", "stats", "fleetapp:manager", "--json")
        assert stats.returncode == 0 and json.loads(stats.stdout)["counts"]["success"] == 22, stats.stderr
        m = scrape(port)
        assert m[("castor_tasks", (("status", "success"),))] == 22
        assert m[("castor_daemons", (("host", OTHER_HOST), ("state", "running")))] == 1
        assert m[("castor_daemons", (("host", here), ("state", "running")))] == 1
        assert m[("castor_daemons", (("host", OTHER_HOST), ("state", "stale")))] == 0

        # No castord on this host, one elsewhere: "not running" here (LSB 3), the fleet still shown.
        a.signal(signal.SIGTERM)
        assert a.wait_exit() == 0
        code, report, text = status(app_dir)
        assert code == 3 and report["running"] is False
        assert [(d["host"], d["pid"], d["stale"]) for d in report["fleet"]] == [(OTHER_HOST, b.pid, False)]
        assert text.splitlines()[0] == "castord is not running on this host (1 castord of the fleet runs elsewhere)"
        b.signal(signal.SIGTERM)
        assert b.wait_exit() == 0
    finally:
        a.stop()
        b.stop()
