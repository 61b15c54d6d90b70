"""Periodic tasks under real castords: each tick once across daemons, no storm after downtime."""

from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import castor
from tests.conftest import wait_until
from tests.process.test_castord import Castord

APP = '''
import os
import castor

manager = castor.Manager(os.environ["CASTOR_TEST_DB"])

@manager.periodic(every=1, mode="thread", name="tick")
def tick():
    return "tock"
'''


@pytest.fixture
def periodic_app(app_dir: Path) -> Path:
    (app_dir / "periodicapp.py").write_text(textwrap.dedent(APP))
    return app_dir


@pytest.fixture
def start(periodic_app: Path) -> Iterator[Callable[[str], Castord]]:
    """Starts castords on the periodic app (thread host only); stops them by pid at teardown."""
    started: list[Castord] = []

    def make(name: str) -> Castord:
        d = Castord(periodic_app, name)
        started.append(d)
        return d.start("--workers", "0", "--threads", "2", app="periodicapp:manager")

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def client(db_path: str) -> Iterator[castor.Manager]:
    m = castor.Manager(db_path)
    yield m
    m.close()


def stop_between_ticks(client: castor.Manager, *daemons: Castord) -> None:
    """Drain the daemons just after a tick whose task finished: the next tick is ~1 s away,
    so no task is left pending by the drain."""
    seen = client.count(name="tick")
    wait_until(lambda: client.count(name="tick") > seen, 10, "another tick")
    wait_until(lambda: client.count(name="tick", status="success") == client.count(name="tick"), 5,
               "the tick's task to finish")
    for d in daemons:
        d.signal(signal.SIGTERM)
    for d in daemons:
        assert d.wait_exit(30) == 0


def fired_ticks(*daemons: Castord) -> list[float]:
    return [e["tick"] for d in daemons for e in d.events("periodic.fired")]


@pytest.mark.timeout(90)
def test_two_castords_on_one_file_fire_each_tick_once(start, client):
    a, b = start("a"), start("b")
    for d in (a, b):
        d.wait_note("READY=1", timeout=30)
    wait_until(lambda: client.count(name="tick") >= 4, 20, "4 ticks fired")
    stop_between_ticks(client, a, b)

    for d in (a, b):
        assert len(d.events("periodic.scheduled")) == 1  # both daemons ran a scheduler
    ticks = fired_ticks(a, b)
    total = client.count(name="tick")
    assert len(ticks) == len(set(ticks)) == total >= 5  # each tick enqueued once, by one daemon
    assert all(t == int(t) for t in ticks)  # every=1: whole seconds, the same in both daemons
    assert client.count(name="tick", status="success") == total
    ids = {e["task_id"] for d in (a, b) for e in d.events("periodic.fired")}
    assert ids == {t.id for t in client.tasks(name="tick", limit=None)}


@pytest.mark.timeout(90)
def test_a_restarted_castord_skips_the_ticks_it_missed(start, client):
    first = start("first")
    first.wait_note("READY=1", timeout=30)
    wait_until(lambda: client.count(name="tick") >= 2, 20, "2 ticks fired")
    stop_between_ticks(client, first)
    before = client.count(name="tick")
    last_tick = max(fired_ticks(first))

    # Down for 3 ticks (the downtime itself is what is tested).
    time.sleep(3)
    restarted_at = time.time()
    second = start("second")
    second.wait_note("READY=1", timeout=30)
    wait_until(lambda: client.count(name="tick") >= before + 2, 20, "2 ticks after the restart")
    stop_between_ticks(client, second)

    after = sorted(fired_ticks(second))
    assert after and after[0] > restarted_at  # no catch-up of the missed ticks
    assert after[0] - last_tick >= 3
    assert client.count(name="tick") == before + len(after)
    assert client.count(name="tick", status="success") == client.count(name="tick")


@pytest.mark.timeout(60)
def test_python_m_castor_fires_schedules_too(periodic_app, processes, client):
    runner_only = processes.worker("periodicapp:manager", "--mode", "thread", "--no-periodic")
    by_hand = client.task(mode="thread", name="tick")(lambda: "tock").delay()
    assert by_hand.join(timeout=20) == "tock"  # the engine is up
    time.sleep(2.5)  # two ticks pass: proving that nothing fires takes the time itself
    assert client.count(name="tick") == 1
    engine = processes.worker("periodicapp:manager", "--mode", "thread")
    wait_until(lambda: client.count(name="tick", status="success") >= 2, 20, "2 ticks run")
    for proc in (engine, runner_only):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    ticks = client.store.schedules()["tick"]
    assert ticks["task_id"] in {t.id for t in client.tasks(name="tick", limit=None)}
