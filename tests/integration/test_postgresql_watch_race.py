"""A joiner's watch that commits while its task's settle is committing is not missed
(castor/store/postgresql.py, WATCH_LOCK_CLASS). Found from outside: ~1 join in 1,000 of
compare_pg.py's latency run took 0.5 s (the re-check), its task ended 2 ms after enqueue.

The window, made to stay open here: the settle looked for watches (_NOTIFY_SETTLED) and
is committing; the watch commits and its first look still sees the task running; then
the settle commits. A deferred trigger (the test's own) holds the settle's COMMIT on an
advisory lock the test holds, so the steps come in that order on any machine."""

from __future__ import annotations

import threading

import pytest

from castor.store import open_store
from castor.store.base import task_topic
from tests.conftest import wait_until
from tests.contract.conftest import postgresql_location
from tests.integration.test_postgresql_durability import claimed, success

psycopg = pytest.importorskip("psycopg")

GATE = 4242  # the test's advisory lock (one-key space; castor's watch lock uses two keys)
HOLD_COMMIT = f"""
CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_xact_lock({GATE}); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER hold_commit AFTER UPDATE ON castor_tasks DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW WHEN (NEW.status = 'success') EXECUTE FUNCTION hold_commit();
"""
WAITING_ON_ADVISORY = ("SELECT count(*) FROM pg_stat_activity "
                       "WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND datname = current_database()")


@pytest.mark.timeout(90)
def test_a_watch_committed_while_the_settle_commits_still_wakes_its_joiner(request: pytest.FixtureRequest,
                                                                          postgres_url: str) -> None:
    location = postgresql_location(request)
    joining, working = open_store(location), open_store(location)
    admin = psycopg.connect(location, autocommit=True)
    gate = psycopg.connect(location, autocommit=True)
    try:
        record = claimed(working, "raced")
        admin.execute(HOLD_COMMIT)
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        settled: list[bool] = []
        settler = threading.Thread(target=lambda: settled.append(working.settle_one(success(record))), daemon=True)
        settler.start()
        # The settle ran its statements and waits in its COMMIT (the deferred trigger).
        wait_until(lambda: admin.execute(WAITING_ON_ADVISORY).fetchone()[0] >= 1, 30, "the settle to reach its COMMIT")

        topic = task_topic("raced")
        looks: list[object] = []

        def join() -> None:
            seen = joining.generation(topic)
            with joining.watch_task("raced") as first:
                looks.append(first.status)
                if not first.status.finished:
                    looks.append(joining.wait_for_change(seen, 20, topic) != seen)  # woken, not timed out

        joiner = threading.Thread(target=join, daemon=True)
        joiner.start()
        # Either the watch waits for the settle (two waiting on advisory locks), or it
        # committed and its first look saw the task running: then let the settle commit.
        wait_until(lambda: looks or admin.execute(WAITING_ON_ADVISORY).fetchone()[0] >= 2, 30,
                   "the watch to wait for the settle or look at the task")
        gate.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
        settler.join(30)
        joiner.join(30)
        assert settled == [True]
        assert looks in (["success"], ["running", True]), looks  # never a first look of running, then no wake-up
    finally:
        admin.close()
        gate.close()
        joining.close()
        working.close()
