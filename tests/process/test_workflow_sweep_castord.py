"""castord's sweep (docs/workflows.md, "The sweep") through a real castord: a chord whose
member row was deleted by hand can never end on its own; castord's master ends it failed
at its first sweep, logs `workflow.advance_missed`, and join() raises MembersMissing.
On the beaver file and on PostgreSQL."""

from __future__ import annotations

import importlib
import sqlite3
import time

import pytest

import castor
from castord.supervisor import WORKFLOW_STALE_SECONDS
from tests.process.test_castord import Castord
from tests.process.test_postgresql_castord import pg_testapp  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def testapp(request: pytest.FixtureRequest, app_dir):
    if request.param == "postgresql":
        return request.getfixturevalue("pg_testapp")
    return importlib.import_module("testapp")


def by_hand(manager: castor.Manager, statement: str, *params: object) -> None:
    """One statement (`?` placeholders) on castord's database, behind castor's back."""
    if manager.store.url.startswith("sqlite://"):
        with sqlite3.connect(manager.store.path) as conn:
            conn.execute(statement, params)
        conn.close()
        return
    import psycopg

    with psycopg.connect(manager.store.url, autocommit=True) as conn:
        conn.execute(statement.replace("?", "%s"), params)


def test_castord_ends_a_chord_whose_member_row_was_deleted(testapp, app_dir):
    # Members due in an hour: castord runs none of them, so only the sweep moves the chord.
    later = {"countdown": 3600}
    chord = castor.chord([testapp.add.s(1, 2).set(**later), testapp.add.s(3, 4).set(**later),
                          testapp.add.s(5, 6).set(**later)], testapp.tadd.s(0)).delay()
    gone, *kept = chord.steps[0]
    by_hand(testapp.manager, "DELETE FROM castor_tasks WHERE id = ?", gone.id)
    stood_still = time.time() - 2 * WORKFLOW_STALE_SECONDS
    by_hand(testapp.manager, "UPDATE castor_workflows SET moved_at = ? WHERE id = ?", stood_still, chord.id)
    d = Castord(app_dir)
    try:
        d.start("--workers", "1", "--threads", "1")
        d.wait_note("READY=1", timeout=30)
        (missed,) = d.wait_event("workflow.advance_missed", timeout=30)
        assert missed["level"] == "warning"
        assert (missed["workflow_id"], missed["kind"], missed["step"]) == (chord.id, "chord", 0)
        assert (missed["remaining_was"], missed["missing"], missed["state"]) == (3, 1, "failed")
        with pytest.raises(castor.MembersMissing, match="1 of the 3 members of its step 0 are missing") as caught:
            chord.join(timeout=30)
        assert isinstance(caught.value, castor.WorkflowFailed) and caught.value.missing == 1
        assert chord.status() == "failed"
        callback = chord.last
        assert callback.status() == "cancelled"
        assert callback.info().error["type"] == "castor.errors.WorkflowStopped"
        assert [t.status() for t in kept] == ["pending", "pending"]  # left as they are
    finally:
        d.stop()
    assert len(d.events("workflow.advance_missed")) == 1
