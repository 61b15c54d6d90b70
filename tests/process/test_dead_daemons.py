"""The heartbeat row of a castord that died without removing it (SIGKILL, a host that
never came back) is listed as stale, then removed by a live castord once it is
views.DAEMON_FORGET_SECONDS old: on a file and on PostgreSQL alike."""

from __future__ import annotations

import importlib
import time

import pytest

from castor.store import open_store
from castor.views import DAEMON_FORGET_SECONDS
from tests.process.test_castord import Castord
from tests.process.test_postgresql_castord import pg_testapp  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(120)


def write_rows(location: str) -> None:
    """A castord gone for longer than DAEMON_FORGET_SECONDS, and one gone for a minute."""
    store = open_store(location)
    try:
        wall = time.time()
        real = store.clock
        for daemon_id, age in (("dead-long-ago", DAEMON_FORGET_SECONDS + 600), ("dead-lately", 60)):
            # Heartbeat ages are on the store's clock: write each row as that clock read then.
            store.clock = (lambda a: lambda: real() - a)(age)
            store.record_daemon(daemon_id, host="gone-host", pid=999_999, app="testapp:manager",
                                started_at=wall - age - 10, info={"state": "running"}, now=wall - age)
    finally:
        store.close()


def ids(location: str) -> set[str]:
    store = open_store(location)
    try:
        return {row["id"] for row in store.daemons()}
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, app_dir) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("pg_testapp").manager.store.url
    return importlib.import_module("testapp").manager.store.url


def test_a_live_castord_removes_the_rows_of_castords_long_dead(location, app_dir):
    write_rows(location)
    assert {"dead-long-ago", "dead-lately"} <= ids(location)
    d = Castord(app_dir)
    try:
        d.start("--workers", "1", "--threads", "1")
        d.wait_note("READY=1", timeout=30)
        (forgot,) = d.wait_event("castord.daemon_forgotten", timeout=30)[-1:]
        assert (forgot["host"], forgot["pid"]) == ("gone-host", 999_999)
        assert forgot["heartbeat_age_s"] > DAEMON_FORGET_SECONDS
        left = ids(location)
        assert "dead-long-ago" not in left and "dead-lately" in left  # a minute: still listed, as stale
        assert len(d.events("castord.daemon_forgotten")) == 1
    finally:
        d.stop()
