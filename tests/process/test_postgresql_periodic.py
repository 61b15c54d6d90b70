"""Periodic ticks under two castords sharing one PostgreSQL database (issue 14 §2-3).

test_periodic.py's test of two castords, unchanged, on a database of the test's own;
then what it does not check: no tick missing between the first and the last. Each
tick is won by one conditional upsert (castor/store/postgresql.py `fire_schedule`).
Castords on separate hosts are the fleet test's (network namespaces).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import castor
from tests.process import test_periodic as sqlite_periodic
from tests.process.test_castord import Castord
from tests.process.test_periodic import periodic_app, start  # noqa: F401 - fixtures

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
    started: list[Castord] = []

    def recorded(name: str) -> Castord:
        started.append(start(name))
        return started[-1]

    sqlite_periodic.test_two_castords_on_one_file_fire_each_tick_once(recorded, pg_client)  # unchanged
    fired = [e for d in started for e in d.events("periodic.fired")]
    assert len(started) == 2 and len(fired) >= 5
    assert unexplained_gaps(fired) == []  # none missed but those the SPEC lets a late loop skip
    assert pg_client.store.schedules()["tick"]["last_tick"] == max(e["tick"] for e in fired)
