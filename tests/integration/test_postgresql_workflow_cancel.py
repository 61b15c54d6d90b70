"""PostgreSQL only: a workflow's cancel racing a requeue of its running member.

Found by tests/system/test_workflow_durability.py (seed 922119448, with 30 kills): the
cancelled chord's member was left `pending` after its workflow had ended `cancelled`,
then claimed and run to its end. Store.cancel_workflow ends the pending and waiting
members in one UPDATE and flags the running ones in a second; under READ COMMITTED each
statement reads its own snapshot, so a member that a concurrent transaction moves from
running to pending (a lost worker's release, a lease's recovery) between the two is
seen running by the first and pending by the second, and neither touches it.

The race is forced, not waited for: the test holds a row lock that the release waits on
after it has locked the member, so the release is open across both of the cancel's
statements. SQLite has one writer, so it cannot interleave there (no test needed).
"""

from __future__ import annotations

import threading
import time

import pytest

import castor
from castor.states import TaskStatus, WorkflowStatus
from tests.conftest import wait_until
from tests.contract.conftest import postgresql_location

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def location(request: pytest.FixtureRequest, postgres_url: str) -> str:
    return postgresql_location(request)


def _waiting_on_locks(conn) -> int:  # noqa: ANN001 - a psycopg connection
    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock'").fetchone()[0]


@pytest.mark.timeout(60)
def test_a_cancel_racing_the_release_of_a_running_member_leaves_it_not_pending(location):
    manager = castor.Manager(location)
    try:
        @manager.task(mode="thread", name="step")
        def step(x):
            return x

        workflow = castor.chain(step.s(1), step.s()).delay()
        time.sleep(0.01)  # a later id: the release locks the member first, then the plain task
        plain = step.delay(2)
        member = workflow.tasks[0]
        assert member.id < plain.id
        claimed = manager.store.claim("crashed", mode="thread", queues=None, limit=2, lease=60, now=time.time())
        assert sorted(r.id for r in claimed) == [member.id, plain.id]

        with psycopg.connect(location, autocommit=True) as watcher, psycopg.connect(location) as blocker:
            blocker.execute("SELECT 1 FROM castor_tasks WHERE id = %s FOR UPDATE", (plain.id,))
            # The crashed worker's release (castord's, on a child's death): it locks the
            # member, then waits for the plain task's row.
            release = threading.Thread(target=manager.store.release_owner, args=("crashed",),
                                       kwargs={"count_attempt": True, "max_lost": 3})
            release.start()
            wait_until(lambda: _waiting_on_locks(watcher) >= 1, 10, "the release to wait on the plain task")
            # The cancel: its first UPDATE sees the member running; its second waits for the release.
            states: list[object] = []
            cancel = threading.Thread(target=lambda: states.append(workflow.cancel()))
            cancel.start()
            wait_until(lambda: _waiting_on_locks(watcher) >= 2, 10, "the cancel to wait on the member")
            blocker.rollback()  # the release goes on and commits; then the cancel's second UPDATE
            release.join(timeout=10)
            cancel.join(timeout=10)
        assert states == [WorkflowStatus.CANCELLED]
        record = manager.store.get(member.id)
        # A cancelled workflow leaves no member to run: it is cancelled, or (running) asked to cancel.
        assert record.status == TaskStatus.CANCELLED or (record.status == TaskStatus.RUNNING
                                                         and record.cancel_requested), record
    finally:
        manager.close()
