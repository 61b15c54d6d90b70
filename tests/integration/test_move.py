"""castord/move.py: a beaver-db file's unfinished tasks to a real PostgreSQL (tests/postgres.py).

tests/process/test_move.py runs `castord move` as a command, beside real castords.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import castor
from castor.states import TaskStatus
from castor.store import Query, Store, open_store
from castord import move as moving
from castord.errors import CastordError, ExitCode
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def source(db_path: str) -> Iterator[castor.Manager]:
    """An application's Manager on its beaver-db file, with tasks of each kind to move."""
    m = castor.Manager(db_path)

    @m.task(mode="process", name="add")
    def add(a, b):
        return a + b

    @m.task(mode="thread", name="flaky", retries=2, retry_delay=3600)
    def flaky():
        raise ConnectionError("not yet")

    @m.task(mode="process", name="once", unique=True)
    def once(x):
        return x

    yield m
    m.close()


@pytest.fixture
def target(postgres_db_url: str) -> Iterator[Store]:
    store = open_store(postgres_db_url)
    yield store
    store.close()


def stock(m: castor.Manager) -> dict[str, str]:
    """A finished task, one waiting to retry (attempted once), a due one, a scheduled one
    and a unique one; their ids by kind."""
    registry = m.registry
    done = registry["add"].delay(0, 0)
    retrying = registry["flaky"].delay()
    castor.Worker(m, mode="process").run(until_idle=True)
    castor.Worker(m, mode="thread", threads=1).run(until_idle=True)
    assert m.store.get(retrying.id).attempts == 1 and done.status() == "success"
    due = registry["add"].delay(1, 2)
    later = registry["add"].apply_async((3, 4), countdown=3600, queue="reports", priority=7)
    unique = registry["once"].delay("x")
    return {"done": done.id, "retrying": retrying.id, "due": due.id, "later": later.id, "unique": unique.id}


def as_stored(record) -> dict:
    """A record's fields but the claim's owner and lease, which stay behind."""
    fields = dataclasses.asdict(record)
    fields.pop("owner")
    fields.pop("lease_expires")
    return fields


def test_unfinished_tasks_move_as_they_were(source, target, postgres_db_url, db_path):
    ids = stock(source)
    unfinished = [ids[k] for k in ("retrying", "due", "later", "unique")]
    before = {i: as_stored(source.store.get(i)) for i in unfinished}
    source.store.merge_schedules({"nightly": {"last_tick": 1000.0, "fired_at": 1001.0, "task_id": None}})
    report = moving.move(db_path, postgres_db_url)
    assert (report.moved, report.by_queue, report.scheduled, report.retrying) == (
        4, {"default": 3, "reports": 1}, 2, 1)  # the retry waits an hour too
    assert (report.left, report.doubled, report.recovered, report.already_there) == ({}, [], [], [])
    assert {i: as_stored(target.get(i)) for i in unfinished} == before
    assert target.get(ids["retrying"]).error["type"] == "builtins.ConnectionError"
    # What moved left the file; the finished task stayed in it.
    assert [r.id for r in source.store.list(Query())] == [ids["done"]]
    assert target.schedules() == {"nightly": {"last_tick": 1000.0, "fired_at": 1001.0, "task_id": None}}
    assert report.schedules == ["nightly"]
    # The unique key holds on the target: a twin enqueued there is the moved task.
    on_pg = castor.Manager(postgres_db_url)
    try:
        @on_pg.task(mode="process", name="once", unique=True)
        def once(x):
            return x

        assert once.delay("x").id == ids["unique"]
    finally:
        on_pg.close()


def test_moving_again_moves_nothing_twice(source, target, postgres_db_url, db_path):
    stock(source)
    assert moving.move(db_path, postgres_db_url).moved == 4
    again = moving.move(db_path, postgres_db_url)
    assert (again.moved, again.left) == (0, {})
    assert target.count(Query()) == 4


def test_a_move_that_stopped_after_copying_is_finished_without_duplicates(source, target, postgres_db_url,
                                                                           db_path):
    """As a move killed between the target's commit and the file's delete leaves it:
    the tasks in both stores. Moving again removes them from the file only."""
    ids = stock(source)
    copies = source.store.pending_copies()
    assert target.insert_copies(copies).inserted == [c.id for c in copies]
    report = moving.move(db_path, postgres_db_url)
    assert report.moved == 4 and sorted(report.already_there) == sorted(c.id for c in copies)
    assert target.count(Query()) == 4
    assert [r.id for r in source.store.list(Query())] == [ids["done"]]


def test_a_dry_run_writes_nothing(source, target, postgres_db_url, db_path):
    stock(source)
    report = moving.move(db_path, postgres_db_url, dry_run=True)
    assert (report.dry_run, report.moved, report.by_queue) == (True, 4, {"default": 3, "reports": 1})
    assert source.store.count(Query(status=TaskStatus.PENDING)) == 4
    assert target.count(Query()) == 0
    assert "nothing was written" in moving.render(report)


def test_a_fresh_castord_row_refuses_the_move_a_stale_or_dead_one_does_not(source, target, postgres_db_url,
                                                                          db_path):
    stock(source)
    now = time.time()
    dead_pid = _dead_pid()
    # A castord of this host killed a moment ago: its row is fresh, its pid is gone.
    source.store.record_daemon("here", host=socket.gethostname(), pid=dead_pid, app="app:m", started_at=now,
                               info={}, now=now)
    clock = source.store.clock
    source.store.clock = lambda: clock() - 300  # one silent for five minutes
    source.store.record_daemon("gone", host="web-9", pid=7, app="app:m", started_at=now - 600, info={},
                               now=now - 300)
    source.store.clock = clock
    assert moving.move(db_path, postgres_db_url, dry_run=True).moved == 4
    source.store.record_daemon("live", host="web-2", pid=42, app="app:manager", started_at=now, info={}, now=now)
    with pytest.raises(CastordError) as refused:
        moving.move(db_path, postgres_db_url)
    assert refused.value.exit_code == ExitCode.REFUSED
    assert str(refused.value).startswith(f"castord runs on {db_path}: pid 42 on web-2 (app app:manager). Stop it")
    assert target.count(Query()) == 0


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (until the kernel reuses it)


def test_running_tasks_move_once_their_lease_ended(source, target, postgres_db_url, db_path):
    ids = stock(source)
    store = source.store
    (held,) = store.claim("gone-worker", mode="process", queues=None, limit=1, lease=30.0, now=time.time())
    with pytest.raises(CastordError) as refused:
        moving.move(db_path, postgres_db_url)
    assert refused.value.exit_code == ExitCode.REFUSED
    assert f"1 task in {db_path} run under a live lease (e.g. {held.id})" in str(refused.value)
    assert re.search(r"wait \d+ s for the leases to end, then move again$", str(refused.value))
    assert target.count(Query()) == 0 and store.status(held.id) == TaskStatus.RUNNING

    store.requeue(held.id, held.fence, count_attempt=False)
    (held,) = store.claim("gone-worker", mode="process", queues=None, limit=1, lease=0.05, now=time.time())
    wait_until(lambda: store.get(held.id).lease_expires < time.time(), 10, "the lease to end")
    report = moving.move(db_path, postgres_db_url)
    assert report.recovered == [held.id] and report.moved == 4
    moved = target.get(held.id)
    assert (moved.status, moved.lost, moved.attempts, moved.owner) == (TaskStatus.PENDING, 1, 1, None)
    assert ids["due"] == held.id  # the only due process task


def test_a_task_whose_unique_key_the_target_holds_stays_in_the_file(source, target, postgres_db_url, db_path):
    ids = stock(source)
    on_pg = castor.Manager(postgres_db_url)
    try:
        @on_pg.task(mode="process", name="once", unique=True)
        def once(x):
            return x

        twin = once.delay("x")
    finally:
        on_pg.close()
    report = moving.move(db_path, postgres_db_url)
    assert report.moved == 3
    assert report.left == {ids["unique"]: f"the target has an unfinished task with its unique key: {twin.id}"}
    assert source.store.status(ids["unique"]) == TaskStatus.PENDING
    assert f"left in the file: {ids['unique']}: the target has" in moving.render(report)


def test_a_task_changed_in_the_file_while_moving_stays_there(source, target, db_path):
    """Between the copy and the delete another worker claims one in the file: it stays
    there, and its copy is taken back from the target."""
    ids = stock(source)
    page = source.store.pending_copies()
    (claimed,) = source.store.claim("outsider", mode="process", queues=None, limit=1, lease=30, now=time.time())
    report = moving.MoveReport(source=db_path, target="pg", dry_run=False)
    moved = moving._move_page(page, source.store, target, report)  # noqa: SLF001 - the race, held still
    assert sorted(c.id for c in moved) == sorted(c.id for c in page if c.id != claimed.id)
    assert list(report.left) == [claimed.id] and "changed in the file" in report.left[claimed.id]
    assert target.get(claimed.id) is None and report.doubled == []
    assert claimed.id == ids["due"]


def test_a_task_changed_in_the_file_after_its_earlier_copy_was_claimed_is_reported(source, target, db_path):
    """An earlier move copied it and stopped; a worker on the target claimed that copy,
    and one on the file claimed the original: it may run twice, and the report says so."""
    stock(source)
    page = source.store.pending_copies()
    target.insert_copies(page)
    (there,) = target.claim("pg-worker", mode="process", queues=None, limit=1, lease=30, now=time.time())
    (here,) = source.store.claim("file-worker", mode="process", queues=None, limit=1, lease=30, now=time.time())
    assert there.id == here.id
    report = moving.MoveReport(source=db_path, target="pg", dry_run=False)
    moving._move_page(page, source.store, target, report)  # noqa: SLF001
    assert report.doubled == [here.id]
    assert f"warning: {here.id} changed in the file after a worker on the target had claimed its copy" in \
        moving.render(report)
