"""The database file deleted or replaced under a running castord (an operator's rm, a
restore that renames another file into place): every connection castord holds
still writes to the old file, so it says so and exits non-zero, for systemd to
start it again on the file now at that path."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from castord.errors import ExitCode
from tests.process.leftovers import in_session
from tests.process.test_castord import daemons  # noqa: F401 - fixture


def start(daemons):  # noqa: F811
    import testapp

    d = daemons().start("--workers", "1", "--threads", "1", "--heartbeat-interval", "0.2")
    d.wait_note("READY=1")
    assert testapp.add.delay(1, 2).join(timeout=15) == 3
    return d


def assert_stopped_for(d, db_path: str, changes: tuple[str, ...]) -> None:
    assert d.wait_exit(30) == ExitCode.DATABASE_REPLACED
    event = d.wait_event("castord.database_replaced")[0]
    assert event["level"] == "critical" and event["database"] == db_path
    assert event["change"].startswith(changes), event
    deadline = time.monotonic() + 10
    while (left := in_session(d.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"left behind: {left}"


@pytest.mark.timeout(60)
def test_a_deleted_database_stops_castord(daemons, app_dir, db_path):  # noqa: F811
    d = start(daemons)
    os.remove(db_path)
    # A connection opened after the rm (any process's) creates a new, empty file there.
    assert_stopped_for(d, db_path, ("missing", "replaced"))


@pytest.mark.timeout(60)
def test_a_database_replaced_by_rename_stops_castord(daemons, app_dir: Path, db_path):  # noqa: F811
    d = start(daemons)
    restored = str(app_dir / "restored.db")
    with sqlite3.connect(db_path) as source, sqlite3.connect(restored) as copy:
        source.backup(copy)
    source.close()
    copy.close()
    os.rename(restored, db_path)
    assert_stopped_for(d, db_path, ("replaced",))
