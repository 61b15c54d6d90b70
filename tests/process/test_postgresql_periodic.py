"""Periodic ticks under two castords sharing one PostgreSQL database (issue 14 §2-3).

test_periodic.py's app and castords (its `start` fixture), on a database of the test's
own. Each tick is won by one conditional upsert (castor/store/postgresql.py
`fire_schedule`). Castords on separate hosts are the fleet test's (network namespaces).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import castor
from tests.conftest import wait_until
from tests.process.test_periodic import fired_ticks, periodic_app, start, stop_between_ticks  # noqa: F401

EVERY = 1.0  # the app's schedule: every=1


@pytest.fixture
def pg_client(postgres_db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[castor.Manager]:
    """The test's view of the store; the castords `start` makes read the same URL."""
    monkeypatch.setenv("CASTOR_TEST_DB", postgres_db_url)
    m = castor.Manager(postgres_db_url)
    yield m
    m.close()


def unexplained_gaps(fired: list[dict]) -> list[tuple[float, float]]:
    """Pairs of consecutive fired ticks with ticks missing between them that no late
    firing explains. A scheduler skips the ticks that passed while it was late (SPEC §6,
    castor/periodic.py): a gap after tick T means T's winner fired it at least as late as
    the last missing tick, or someone would have fired the next one."""
    by_tick = sorted(fired, key=lambda e: e["tick"])
    gaps = []
    for this, after in zip(by_tick, by_tick[1:], strict=False):
        missing = round((after["tick"] - this["tick"]) / EVERY) - 1
        if missing > 0 and this["late_s"] < missing * EVERY - 0.01:
            gaps.append((this["tick"], after["tick"]))
    return gaps


@pytest.mark.timeout(90)
def test_two_castords_on_one_postgresql_database_fire_each_tick_once(start, pg_client):  # noqa: F811
    a, b = start("a"), start("b")
    for d in (a, b):
        d.wait_note("READY=1", timeout=30)
    wait_until(lambda: pg_client.count(name="tick") >= 6, 30, "6 ticks fired")
    stop_between_ticks(pg_client, a, b)

    for d in (a, b):
        assert len(d.events("periodic.scheduled")) == 1  # both daemons ran a scheduler
    ticks = fired_ticks(a, b)
    total = pg_client.count(name="tick")
    assert len(ticks) == len(set(ticks)) == total >= 7  # each tick enqueued once, by one daemon
    assert all(t == int(t) for t in ticks)  # every=1: whole seconds, the same in both daemons
    fired = [e for d in (a, b) for e in d.events("periodic.fired")]
    assert unexplained_gaps(fired) == []  # none missed but those the SPEC lets a late loop skip
    assert pg_client.count(name="tick", status="success") == total
    tasks = pg_client.tasks(name="tick", limit=None)
    assert {e["task_id"] for e in fired} == {t.id for t in tasks}
    assert pg_client.store.schedules()["tick"]["last_tick"] == max(ticks)
