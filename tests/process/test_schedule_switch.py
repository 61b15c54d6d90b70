"""Disabling, enabling and running a schedule by hand under a real castord, from the shell:
`castord schedules disable|enable|run|list`, on the beaver file and on PostgreSQL.

A negative ("no tick fired while disabled") is proved against a witness, not a sleep: the
app has two schedules on the same every=1 ticks, `watched` registered before `witness`.
The Scheduler walks its schedules in that order on each pass, so once the witness has
fired a tick T, the castord has also tried `watched` at every tick up to T. A witness tick
three ticks after the disable was committed therefore means three refused ticks of
`watched`, however fast or slow the machine is.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import castor
from tests.conftest import wait_until
from tests.process.test_castord import Castord, run_cli

APP = '''
import os
import castor

manager = castor.Manager(os.environ["CASTOR_TEST_DB"])

@manager.periodic(every=1, mode="thread", name="watched")
def watched():
    return "watched"

@manager.periodic(every=1, mode="thread", name="witness")
def witness():
    return "witness"
'''
NAME = "switchapp:manager"


@pytest.fixture(params=["sqlite", "postgresql"])
def switch_app(request: pytest.FixtureRequest, app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The app on the test's beaver file, or on a PostgreSQL database of its own."""
    if request.param == "postgresql":
        monkeypatch.setenv("CASTOR_TEST_DB", request.getfixturevalue("postgres_db_url"))
    (app_dir / "switchapp.py").write_text(textwrap.dedent(APP))
    return app_dir


@pytest.fixture
def client(switch_app: Path) -> Iterator[castor.Manager]:
    m = castor.Manager(os.environ["CASTOR_TEST_DB"])
    yield m
    m.close()


@pytest.fixture
def daemon(switch_app: Path) -> Iterator[Castord]:
    d = Castord(switch_app, "switch")
    yield d.start("--workers", "0", "--threads", "2", app=NAME)
    d.stop()


def last_tick(client: castor.Manager, name: str) -> float:
    return (client.store.schedules().get(name) or {}).get("last_tick") or 0.0


def cli(app_dir: Path, *args: str) -> str:
    out = run_cli(app_dir, "schedules", *args)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.timeout(90)
def test_disable_stops_the_ticks_and_enable_resumes_them_without_a_burst(switch_app, daemon, client):
    daemon.wait_note("READY=1", timeout=30)
    wait_until(lambda: last_tick(client, "watched") > 0, 20, "watched to fire once")

    assert cli(switch_app, "disable", NAME, "watched") == "disabled schedule watched"
    disabled_at = time.time()  # the disable is committed: any tick after this must be refused
    assert cli(switch_app, "disable", NAME, "watched") == "schedule watched was disabled already"
    fired_before = client.count(name="watched")
    wait_until(lambda: last_tick(client, "witness") >= disabled_at + 3, 20, "three witness ticks after the disable")
    assert last_tick(client, "watched") < disabled_at
    assert client.count(name="watched") == fired_before
    rows = {r["name"]: r for r in json.loads(cli(switch_app, "list", NAME))}
    assert rows["watched"]["enabled"] is False and rows["watched"]["next_tick"] is None
    assert rows["witness"]["enabled"] is True and rows["witness"]["next_tick"] > rows["witness"]["last_tick"]
    status = json.loads(run_cli(switch_app, "status", NAME, "--json").stdout)["schedules"]
    assert (status["watched"]["enabled"], status["watched"]["next_tick"]) == (False, None)
    assert status["witness"]["enabled"] is True
    assert "schedule watched (disabled: castord schedules enable)" in run_cli(switch_app, "status", NAME).stdout

    assert cli(switch_app, "enable", NAME, "watched") == "enabled schedule watched"
    enabled_at = time.time()
    wait_until(lambda: last_tick(client, "watched") > enabled_at, 20, "watched to fire again")
    ticks = [e["tick"] for e in daemon.events("periodic.fired") if e["schedule"] == "watched"]
    assert not [t for t in ticks if disabled_at <= t <= enabled_at - 1]  # none of the missed ticks fired
    assert [t for t in ticks if t > enabled_at]


@pytest.mark.timeout(90)
def test_run_now_enqueues_once_and_a_castord_runs_it(switch_app, daemon, client):
    daemon.wait_note("READY=1", timeout=30)
    cli(switch_app, "disable", NAME, "watched")  # so that only the run by hand makes a `watched` task
    before = client.count(name="watched")
    said = cli(switch_app, "run", NAME, "watched")
    assert said.startswith("enqueued watched: ")
    task = client.get(said.split(": ")[1])
    assert task is not None and task.join(timeout=30) == "watched"
    assert client.count(name="watched") == before + 1
    assert (client.store.schedules().get("watched") or {}).get("task_id") != task.id  # not a tick


def test_the_schedule_commands_refuse_bad_input(switch_app, client):
    for command in ("disable", "enable", "run"):
        unknown = run_cli(switch_app, "schedules", command, NAME, "nope")
        assert unknown.returncode == 5, unknown.stderr
        assert "no periodic task named 'nope' in this app (its schedules: watched, witness)" in unknown.stderr
        missing = run_cli(switch_app, "schedules", command, NAME)
        assert missing.returncode == 2 and "Missing argument 'NAME'" in missing.stderr
        no_app = run_cli(switch_app, "schedules", command, "no_such_module:manager", "watched")
        assert no_app.returncode == 3 and no_app.stderr.startswith("error: ")
    assert client.disabled_schedules() == set() and client.count() == 0
