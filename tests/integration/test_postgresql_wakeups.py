"""PostgreSQL's wake-ups say whom they are for (castor/store/pg_wakeup.py): a waiter
is woken by what it waits for, not by every write to the store.

Notifications arrive in the order their transactions committed, so a test that wants
to show that a write sent *no* notification for a topic follows it with a write that
sends one (a marker) and, once the marker has arrived, counts what arrived before it."""

from __future__ import annotations

import threading

import pytest

from castor.states import TaskStatus
from castor.store import open_store
from castor.store.base import Settlement, task_topic, work_topic
from tests.conftest import wait_until
from tests.contract.builders import new
from tests.contract.conftest import postgresql_location

psycopg = pytest.importorskip("psycopg")

LONG = 30.0


@pytest.fixture
def location(request: pytest.FixtureRequest, postgres_url: str) -> str:
    return postgresql_location(request)


@pytest.fixture
def pair(location):
    """A listening store and a writing one on a fresh schema."""
    listening, writing = open_store(location), open_store(location)
    yield listening, writing
    listening.close()
    writing.close()


def arrived_until_marker(listening, writing, since: int) -> int:
    """Notifications that reached `listening` after generation `since` (read before the
    writes looked at), up to and including a marker `writing` sends now."""
    marker_topic = work_topic("marker")
    before_marker = listening.generation(marker_topic)
    writing.enqueue([new("marker", mode="marker")])
    assert listening.wait_for_change(before_marker, LONG, marker_topic) != before_marker
    return listening.generation() - since


def claim_one(store, mode="process"):
    (record,) = store.claim("w1", mode=mode, queues=None, limit=1, lease=30.0, now=0.0 + 10**9)
    return record


@pytest.mark.timeout(60)
def test_a_task_of_another_mode_does_not_wake_a_worker(pair):
    listening, writing = pair
    since = listening.generation()  # listening from here
    thread_topic = work_topic("thread")
    before = listening.generation(thread_topic)
    writing.enqueue([new("p", mode="process")])
    assert arrived_until_marker(listening, writing, since) == 2  # the process task's, and the marker
    assert listening.generation(thread_topic) == before


@pytest.mark.timeout(60)
def test_the_settle_of_a_task_nobody_joins_sends_nothing(pair):
    listening, writing = pair
    writing.enqueue([new("a")])
    record = claim_one(writing)
    since = listening.generation()
    writing.settle_one(Settlement(record.id, "w1", 1, TaskStatus.SUCCESS, result="1", finished_at=10**9,
                                  fence=record.fence))
    assert arrived_until_marker(listening, writing, since) == 1  # the marker alone


@pytest.mark.timeout(60)
def test_a_joined_tasks_end_wakes_its_joiner_and_no_worker(pair):
    listening, writing = pair
    writing.enqueue([new("a"), new("b")])
    record = claim_one(writing)
    work = work_topic("process")
    with listening.watch_task("a"):
        seen, work_seen = listening.generation(task_topic("a")), listening.generation(work)
        writing.settle_one(Settlement(record.id, "w1", 1, TaskStatus.SUCCESS, result="1", finished_at=10**9,
                                      fence=record.fence))
        assert listening.wait_for_change(seen, LONG, task_topic("a")) != seen
        assert listening.generation(task_topic("b")) == listening.generation(work) == work_seen


@pytest.mark.timeout(60)
def test_a_task_due_later_sends_nothing_its_workers_find_it_by_its_eta(pair):
    listening, writing = pair
    since = listening.generation()
    writing.enqueue([new("later", now=10**9, eta=10**9 + 60)])
    assert arrived_until_marker(listening, writing, since) == 1


class Hold:
    """Holds one task id's INSERT in flight: another transaction inserted that id and
    has not ended, so the store's INSERT waits on the primary key until it rolls back."""

    def __init__(self, location: str, task_id: str):
        self.conn = psycopg.connect(location)
        self.conn.execute(
            "INSERT INTO castor_tasks (id, task_name, mode, status, serializer, enqueued_at, eta) "
            "VALUES (%s, 'blocker', 'none', 'cancelled', 'json', 0, 0)", (task_id,))

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def writes_waiting(location: str) -> int:
    with psycopg.connect(location, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND datname = current_database()").fetchone()[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("order", ["quiet write first", "notifying write first"])
def test_a_write_that_went_without_a_notification_is_announced_after_it_committed(pair, location, order):
    """Two .delay()s of one producer at once: the second goes without a notification
    (the first's is in flight). Whichever commits last, a worker that sleeps whenever it
    finds nothing is woken after each, never waiting out its timeout."""
    listening, writing = pair
    topic = work_topic("thread")
    listening.generation()
    holds = {"loud": Hold(location, "loud"), "quiet": Hold(location, "quiet")}
    writers = {}
    claimed: list[str] = []
    slept_through: list[int] = []

    def worker() -> None:
        while len(claimed) < 2:
            seen = listening.generation(topic)
            claimed.extend(r.id for r in listening.claim("w", mode="thread", queues=None, limit=10,
                                                         lease=30.0, now=10**9 + 1))
            if len(claimed) < 2 and listening.wait_for_change(seen, LONG, topic) == seen:
                slept_through.append(len(claimed))
                return

    try:
        for name, count in (("loud", 1), ("quiet", 2)):
            writers[name] = threading.Thread(target=writing.enqueue, args=([new(name, mode="thread")],))
            writers[name].start()
            wait_until(lambda n=count: writes_waiting(location) == n, 30, f"the {name} write in flight")
        consumer = threading.Thread(target=worker)
        consumer.start()
        for name in (["quiet", "loud"] if order == "quiet write first" else ["loud", "quiet"]):
            holds.pop(name).release()
            writers[name].join(LONG)
        consumer.join(LONG + 10)
    finally:
        for hold in holds.values():
            hold.release()
    assert not slept_through, f"the worker slept through a notification owed (it held {claimed})"
    assert sorted(claimed) == ["loud", "quiet"]


def task_row_version(location: str, task_id: str):
    with psycopg.connect(location, autocommit=True) as conn:
        return conn.execute("SELECT xmin::text FROM castor_tasks WHERE id = %s", (task_id,)).fetchone()


@pytest.mark.timeout(60)
def test_a_watch_never_writes_the_tasks_row(pair, location):
    """A join's watch is a row of its own table: the task's row is not written (so not
    locked either). Schema v2 marked the row, and a claim meeting that lock passed over
    the task (SKIP LOCKED) for a lower-priority one."""
    listening, writing = pair
    writing.enqueue([new("a", mode="thread")])
    before = task_row_version(location, "a")
    with writing.watch_task("a"):
        assert task_row_version(location, "a") == before
    assert task_row_version(location, "a") == before


@pytest.mark.timeout(60)
def test_a_watch_in_flight_does_not_hide_its_task_from_a_claim(pair, location):
    """A watch whose transaction has not committed yet holds no lock a claim meets."""
    listening, writing = pair
    writing.enqueue([new("high", mode="thread", priority=5), new("low", mode="thread")])
    with psycopg.connect(location) as joiner:
        joiner.execute("INSERT INTO castor_watches (task_id, watcher, since) VALUES ('high', 'w', 0)")
        assert claim_one(writing, mode="thread").id == "high"
        joiner.rollback()


@pytest.mark.timeout(60)
def test_a_watch_ends_with_its_joiner_and_a_dead_joiners_is_forgotten(pair, location):
    """A joiner's watch is deleted by its store's next watch (one statement) or close();
    one a dead joiner left, by the expiry purge once its task is finished."""
    listening, writing = pair
    writing.enqueue([new("a", mode="thread"), new("b", mode="thread")])

    def watches():
        with psycopg.connect(location, autocommit=True) as conn:
            return conn.execute("SELECT task_id FROM castor_watches ORDER BY task_id").fetchall()

    third = open_store(location)
    with writing.watch_task("a"), third.watch_task("a"):
        assert watches() == [("a",), ("a",)]  # one per joiner
    with writing.watch_task("b"):
        assert watches() == [("a",), ("b",)]  # writing's watch of a went with it
    third.close()
    assert watches() == [("b",)]
    with writing.watch_task("a"):
        assert watches() == [("a",)]
    writing.close()  # its last watch goes with it
    writing = listening
    assert watches() == []
    # Joiners that died: watches of a pending task stay; of a finished one, go.
    with psycopg.connect(location, autocommit=True) as conn:
        conn.execute("INSERT INTO castor_watches (task_id, watcher, since) "
                     "VALUES ('a', 'dead', 0), ('b', 'dead', 0), ('gone', 'dead', 0)")
    record = claim_one(writing, mode="thread")
    writing.settle_one(Settlement(record.id, "w1", record.attempts, TaskStatus.SUCCESS, result="1",
                                  finished_at=10.0**9, fence=record.fence))
    writing.purge_expired(now=10.0**9)
    assert watches() == [("b",) if record.id == "a" else ("a",)]



@pytest.mark.timeout(60)
def test_a_watch_gives_the_joiner_its_first_look_in_the_same_round_trip(pair, location):
    """join()'s first read of the task comes with the watch (one pipeline: the watch
    commits, then the row is read), so it sees every settle the watch might have missed."""
    listening, writing = pair
    writing.enqueue([new("a", mode="thread")])
    with listening.watch_task("a") as first:
        assert first is not None and (first.id, first.status) == ("a", TaskStatus.PENDING)
    with listening.watch_task("nope") as missing:
        assert missing is None  # the caller looks itself, and finds no task


def settle_watched(pair, task_id: str, result: str | bytes | None, status: TaskStatus = TaskStatus.SUCCESS):
    """Settle `task_id` (claimed by the writing store) while the listening store watches it;
    what the listening store was told, once the wake-up arrived."""
    listening, writing = pair
    writing.enqueue([new(task_id)])
    record = claim_one(writing)
    topic = task_topic(task_id)
    with listening.watch_task(task_id):
        seen = listening.generation(topic)
        writing.settle_one(Settlement(record.id, "w1", 1, status, result=result, finished_at=10**9,
                                      fence=record.fence, error={"type": "E"} if status == TaskStatus.FAILED else None))
        assert listening.wait_for_change(seen, LONG, topic) != seen
        return listening.told_result(task_id)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("result", ['{"a": "é ✓"}', b"\x80\x04\x95\x00\n\x1f\x00pickled", "x" * 3000])
def test_a_joined_success_wakes_its_joiner_with_its_result(pair, result):
    told = settle_watched(pair, "a", result)
    assert told is not None and told.serializer == "json" and told.value == result


@pytest.mark.timeout(60)
def test_a_large_result_or_a_failure_is_not_told_the_joiner_reads_it(pair):
    assert settle_watched(pair, "big", "x" * 3001) is None
    assert settle_watched(pair, "bad", None, status=TaskStatus.FAILED) is None


@pytest.mark.timeout(60)
def test_what_was_told_is_forgotten_when_the_watch_ends(pair):
    listening, _ = pair
    assert settle_watched(pair, "a", "1") is not None
    assert listening.told_result("a") is None


@pytest.mark.timeout(60)
def test_join_returns_a_told_result_without_reading_the_task_again(location, tmp_path):
    """The joiner reads the task once, with its watch; the settle's wake-up brings the
    result, so that join returns without a second read (one round trip less)."""
    import castor
    from tests.pg_trace import TracedStore, unprepared

    def double(n: int) -> dict[str, int]:
        return {"twice": 2 * n}

    joining, working = castor.Manager(unprepared(location)), castor.Manager(location)
    doubled = joining.task(mode="thread", name="double")(double)
    working.task(mode="thread", name="double")(double)
    traced = TracedStore(joining.store, tmp_path)
    try:
        task = doubled.delay(21)
        results = []

        def join() -> None:
            results.append(task.join(timeout=LONG))

        def run() -> None:
            joiner = threading.Thread(target=join)
            joiner.start()
            wait_until(lambda: working.store._fetch("SELECT count(*) FROM castor_watches")[0][0] == 1,  # noqa: SLF001
                       LONG, "the joiner to watch its task")
            assert castor.Worker(working, mode="thread").step()
            joiner.join(LONG)

        sent = [sql for t in traced.transactions(run) for sql in t]
        assert results == [{"twice": 42}]
        reads = [sql for sql in sent if sql.startswith("SELECT") and "FROM castor_tasks WHERE id" in sql]
        assert len(reads) == 1, reads  # the watch's first look only
    finally:
        traced.close()
        working.close()


@pytest.mark.timeout(60)
def test_the_end_of_a_concurrency_limited_task_wakes_its_modes_workers(pair):
    """A freed slot lets the next task of a limited name start: the end of a limited
    task wakes the idle workers of its mode (not only their 0.5 s re-check)."""
    listening, writing = pair
    writing.set_concurrency_limit("one", 1)
    # As the producer stores them: '' is the key of a name limited as a whole.
    writing.enqueue([new("a", name="one", concurrency_key=""), new("b", name="one", concurrency_key="")])
    record = claim_one(writing)
    assert writing.claim("w2", mode="process", queues=None, limit=1, lease=30.0, now=10.0**9) == []  # full
    work = work_topic("process")
    seen = listening.generation(work)
    writing.settle_one(Settlement(record.id, "w1", 1, TaskStatus.SUCCESS, result="1", finished_at=10**9,
                                  fence=record.fence))
    assert listening.wait_for_change(seen, LONG, work) != seen
    (freed,) = writing.claim("w2", mode="process", queues=None, limit=1, lease=30.0, now=10.0**9)
    assert freed.id == "b"
