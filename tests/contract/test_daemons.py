"""castord heartbeat rows: record, list, remove."""

from __future__ import annotations

import pytest


def record(store, clocks, daemon_id, *, info=None, pid=100):
    store.record_daemon(daemon_id, host="h1", pid=pid, app="app:manager", started_at=clocks.wall - 10,
                        info=info or {}, now=clocks.wall)


def test_a_heartbeat_row_reads_back(store, clocks):
    record(store, clocks, "d1", info={"children": 2, "state": "running"})
    (row,) = store.daemons()
    assert {k: row[k] for k in ("id", "host", "pid", "app", "started_at", "heartbeat_at", "info")} == {
        "id": "d1", "host": "h1", "pid": 100, "app": "app:manager", "started_at": clocks.wall - 10,
        "heartbeat_at": clocks.wall, "info": {"children": 2, "state": "running"}}
    assert row["heartbeat_age"] == pytest.approx(0.0, abs=1e-6)


def test_a_heartbeat_updates_its_row(store, clocks):
    record(store, clocks, "d1", info={"n": 1})
    clocks.advance(5)
    record(store, clocks, "d1", info={"n": 2}, pid=999)
    (row,) = store.daemons()
    assert (row["heartbeat_at"], row["info"], row["pid"], row["started_at"]) == (
        clocks.wall, {"n": 2}, 100, clocks.wall - 15)  # who started, and when, stay


def test_the_age_runs_on_the_stores_clock(store, clocks):
    record(store, clocks, "d1")
    clocks.lease_now += 7  # the wall clock did not move
    assert store.daemons()[0]["heartbeat_age"] == pytest.approx(7.0)


def test_freshest_first(store, clocks):
    record(store, clocks, "old")
    clocks.advance(5)
    record(store, clocks, "new")
    assert [r["id"] for r in store.daemons()] == ["new", "old"]


def test_remove(store, clocks):
    record(store, clocks, "d1")
    record(store, clocks, "d2")
    store.remove_daemon("d1")
    store.remove_daemon("unknown")  # nothing to remove: no error
    assert [r["id"] for r in store.daemons()] == ["d2"]


def test_none(store):
    assert store.daemons() == []
