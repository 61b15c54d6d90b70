"""Finding due tasks by seeks (castor/store/ready.py, schema v5): claim order across
queues, priorities, ETAs and at-once tasks; plans that go stale; counts; the query
plans themselves; a v4 file migrated."""

from __future__ import annotations

import random
import sqlite3

import pytest

from castor.states import TaskStatus
from castor.store import NewTask, Query, open_store, ready
from castor.store.schema import MIGRATIONS, SCHEMA_VERSION

NOW = 1000.0


def new(task_id, *, queue="default", priority=0, eta=None, enqueued_at=NOW, mode="process"):
    """A task enqueued at `enqueued_at`; without `eta` it is due at once (at_once)."""
    return NewTask(id=task_id, name="t", mode=mode, serializer="json", args="[]", kwargs="{}",
                   enqueued_at=enqueued_at, eta=enqueued_at if eta is None else eta, queue=queue,
                   priority=priority)


@pytest.fixture
def store(db_path):
    s = open_store(db_path)
    s.clock = lambda: NOW  # leases: the store's own clock
    yield s
    s.close()


LEASE = 3600.0  # long: next_due() also names the earliest lease expiry of a running task


def claim_ids(store, *, now=NOW, limit=1, queues=None, mode="process", isolated=False, owner="w"):
    return [r.id for r in store.claim(owner, mode=mode, queues=queues, limit=limit, lease=LEASE, now=now,
                                      isolated=isolated)]


def drain(store, **kw):
    out = []
    while ids := claim_ids(store, **kw):
        out += ids
    return out


def test_claim_order_merges_queues_priorities_etas_and_at_once_tasks(store):
    store.enqueue([
        new("a-now-p0", queue="a", enqueued_at=990.0),
        new("b-eta-p0", queue="b", eta=980.0, enqueued_at=900.0),  # an ETA that has passed
        new("c-now-p5", queue="c", priority=5, enqueued_at=995.0),
        new("a-eta-p5", queue="a", priority=5, eta=999.0, enqueued_at=900.0),
        new("b-later-p9", queue="b", priority=9, eta=1100.0),  # not yet due
        new("c-now-p0", queue="c", enqueued_at=990.0),  # ties a-now-p0 on eta: by id
        new("a-eta-m1", queue="a", priority=-1, eta=1.0, enqueued_at=0.5),
    ])
    order = ["c-now-p5", "a-eta-p5", "b-eta-p0", "a-now-p0", "c-now-p0", "a-eta-m1"]
    assert drain(store) == order
    assert store.next_due(mode="process", now=NOW) == 1100.0


def test_a_batch_claim_takes_the_best_in_order(store):
    store.enqueue([new(f"t{i}", queue="ab"[i % 2], priority=i % 3, eta=NOW - i) for i in range(12)])
    expected = sorted((f"t{i}" for i in range(12)), key=lambda t: (-(int(t[1:]) % 3), NOW - int(t[1:]), t))
    assert claim_ids(store, limit=5) == expected[:5]
    assert claim_ids(store, limit=100) == expected[5:]


def test_a_queue_filter_skips_the_other_queues(store):
    store.enqueue([new("x1", queue="x", priority=9), new("y1", queue="y"), new("z1", queue="z", priority=1),
                   new("y2", queue="y", priority=2, eta=NOW - 5)])
    assert not store.has_due(mode="process", queues=["w"], now=NOW)
    assert store.has_due(mode="process", queues=["z", "y"], now=NOW)
    assert drain(store, queues=["z", "y", "y"]) == ["y2", "z1", "y1"]
    assert drain(store, queues=["w"]) == []
    assert drain(store, queues=["x"]) == ["x1"]


def test_tasks_not_yet_due_at_a_better_priority_do_not_hide_the_due_ones(store):
    store.enqueue([new(f"later{i}", priority=10, eta=NOW + 100 + i) for i in range(50)])
    store.enqueue([new("due", priority=0, eta=NOW - 1, enqueued_at=NOW - 2), new("now", priority=-5)])
    assert store.has_due(mode="process", queues=None, now=NOW)
    assert drain(store) == ["due", "now"]
    assert store.next_due(mode="process", now=NOW) == NOW + 100
    assert drain(store, now=NOW + 101.5) == ["later0", "later1"]


def test_after_the_wall_clock_steps_back_at_once_tasks_are_due_in_eta_order(store):
    # Enqueued at 1000-1002 without an ETA; the clock then reads 900. A countdown task
    # waits for its ETA; an ETA that had passed before the step waits again.
    store.enqueue([new("x", enqueued_at=1001.0), new("w", enqueued_at=1000.0), new("later", eta=1005.0),
                   new("y", enqueued_at=1002.0, priority=0), new("old", eta=899.0, enqueued_at=850.0),
                   new("passed", eta=950.0, enqueued_at=850.0)])
    assert store.has_due(mode="process", queues=None, now=900.0)
    assert store.next_due(mode="process", now=900.0) == 950.0  # the at-once ones are due already
    assert drain(store, now=900.0) == ["old", "w", "x", "y"]
    assert drain(store, now=1010.0) == ["passed", "later"]


def test_tasks_set_apart_are_claimed_only_by_a_claim_for_them(store):
    store.enqueue([new("t1", mode="thread"), new("t2", mode="thread"), new("t3", mode="thread", eta=NOW + 5)])
    assert claim_ids(store, mode="thread", limit=2, owner="host") == ["t1", "t2"]
    released = store.release_owner("host", count_attempt=True, max_lost=3)  # crashed with both: set apart
    assert {r.id: r.isolate for r in released} == {"t1": True, "t2": True}
    assert not store.has_due(mode="thread", queues=None, now=NOW)
    assert store.has_due(mode="thread", queues=None, now=NOW, isolated=True)
    assert store.next_due(mode="thread", now=NOW) == NOW + 5  # only what an ordinary claim takes
    assert claim_ids(store, mode="thread", isolated=True, limit=5) == ["t1", "t2"]
    assert claim_ids(store, mode="thread", now=NOW + 5) == ["t3"]


def test_a_plan_sees_a_queue_or_an_eta_priority_that_appears_after_it_was_read(store):
    store.enqueue([new(f"d{i}") for i in range(3)])
    assert claim_ids(store) == ["d0"]  # the plan: one queue, no ETA runs
    store.enqueue([new("zz-better", queue="zz", priority=3)])
    assert claim_ids(store) == ["zz-better"]
    store.enqueue([new("aa-better", queue="aa", priority=2)])
    assert claim_ids(store) == ["aa-better"]
    store.enqueue([new("eta-p1", priority=1, eta=NOW - 1, enqueued_at=NOW - 2)])  # a new ETA run
    assert store.has_due(mode="process", queues=["default"], now=NOW)
    assert claim_ids(store, queues=["default"]) == ["eta-p1"]
    store.enqueue([new("eta-p7", priority=7, eta=NOW + 7, enqueued_at=NOW - 2),
                   new("eta-p4", queue="aa", priority=4, eta=NOW + 3, enqueued_at=NOW - 2)])
    assert store.next_due(mode="process", now=NOW, queues=["default"]) == NOW + 7
    assert store.next_due(mode="process", now=NOW) == NOW + 3
    assert drain(store, now=NOW + 10) == ["eta-p7", "eta-p4", "d1", "d2"]
    assert not store.has_due(mode="process", queues=None, now=NOW + 10)
    assert store.next_due(mode="process", now=NOW + 10) == NOW + 10 + LEASE  # the running ones' leases


def test_settle_and_claim_sees_a_new_queue_inside_its_transaction(store):
    from castor.store.base import Settlement

    store.enqueue([new("a", priority=1), new("b"), new("c", queue="q", priority=2)])
    (first,) = store.claim("w", mode="process", queues=None, limit=1, lease=60.0, now=NOW)
    assert first.id == "c"  # the plan: queues default and q
    store.enqueue([new("n", queue="new", priority=1, enqueued_at=NOW - 1)])  # between them
    done = Settlement("c", "w", first.attempts, TaskStatus.SUCCESS, result="1", finished_at=NOW, fence=first.fence)
    accepted, claims = store.settle_and_claim([done], "w", mode="process", queues=None, limit=5, lease=60.0,
                                              now=NOW)
    assert accepted == [True] and [r.id for r in claims] == ["n", "a", "b"]


def model_order(tasks, now, queues, mode="process"):
    due = [t for t in tasks if t.mode == mode and (not queues or t.queue in queues)
           and (t.eta <= now or t.eta <= t.enqueued_at)]
    return [t.id for t in sorted(due, key=lambda t: (-t.priority, t.eta, t.id))]


@pytest.mark.parametrize("chunk_terms", [ready.CHUNK_TERMS, 3])
@pytest.mark.parametrize("seed", range(4))
def test_claims_match_a_sort_of_everything_due(db_path, monkeypatch, seed, chunk_terms):
    """Random backlogs, claimed in random batches, against the plain definition: the due
    tasks of the served queues sorted by (priority DESC, eta, id). chunk_terms=3 splits
    every plan into several statements."""
    monkeypatch.setattr(ready, "CHUNK_TERMS", chunk_terms)
    rng = random.Random(seed)
    store = open_store(db_path)
    store.clock = lambda: NOW
    try:
        tasks = []
        for i in range(300):
            enqueued = NOW + rng.uniform(-50, 20)  # some were enqueued "after now": a clock stepped back
            eta = enqueued if rng.random() < 0.5 else enqueued + rng.uniform(-30, 60)
            tasks.append(new(f"t{i:03d}", queue=rng.choice("abcd"), priority=rng.randint(-2, 3), eta=eta,
                             enqueued_at=enqueued, mode=rng.choice(["process", "process", "thread"])))
        store.enqueue(tasks)
        now, remaining = NOW, list(tasks)
        for _ in range(40):
            queues = rng.choice([None, ["a"], ["b", "d"], ["c", "a", "e"]])
            limit = rng.randint(1, 6)
            expected = model_order(remaining, now, queues)
            assert store.has_due(mode="process", queues=queues, now=now) == bool(expected)
            got = claim_ids(store, now=now, limit=limit, queues=queues)
            assert got == expected[:limit]
            remaining = [t for t in remaining if t.id not in got]
            future = [t.eta for t in remaining if t.mode == "process" and (not queues or t.queue in queues)
                      and t.eta > now and t.eta > t.enqueued_at]
            leases = [now + LEASE] if len(remaining) < len(tasks) else []  # some claimed: running
            assert store.next_due(mode="process", now=now, queues=queues) == min(future + leases, default=None)
            if rng.random() < 0.3:
                extra = new(f"n{rng.randint(0, 10**6):07d}", queue=rng.choice("abcde"), priority=rng.randint(-3, 5),
                            eta=now + rng.uniform(-5, 5), enqueued_at=now)
                store.enqueue([extra])
                remaining.append(extra)
            now += rng.uniform(-3, 4)  # the wall clock goes on, or steps back a little
    finally:
        store.close()


def test_counts_and_stats_come_from_the_index(store):
    store.enqueue([new("a1", queue="a"), new("a2", queue="a", eta=NOW + 50), new("b1", queue="b", priority=3),
                   new("b2", queue="b", mode="thread", eta=NOW - 20, enqueued_at=NOW - 30),
                   new("stepped", queue="c", enqueued_at=NOW + 40)])  # at once, though its eta is ahead
    assert store.pending_by_queue() == {"a": 2, "b": 2, "c": 1}
    assert claim_ids(store, queues=["b"]) == ["b1"]
    counts = store.counts_by_status()
    assert (counts[TaskStatus.PENDING], counts[TaskStatus.RUNNING]) == (4, 1)
    stats = store.queue_stats(now=NOW)
    assert stats["scheduled"] == 1  # a2; "stepped" is due at once
    assert stats["oldest_due"] == NOW - 20
    assert store.count(Query(dirty=True)) == 0
    store.release_owner("w", count_attempt=True, max_lost=3)  # b1's worker died: lost once
    assert store.count(Query(dirty=True)) == 1
    assert store.pending_by_queue() == {"a": 2, "b": 2, "c": 1}


def plan_lines(conn, sql, n_params):
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (None,) * n_params)]


@pytest.mark.parametrize("queues", [None, ["a", "b"]])
@pytest.mark.parametrize("isolated", [False, True])
def test_every_plan_statement_seeks_the_ready_index_and_never_scans(store, db_path, queues, isolated):
    """A structural check, not a timing: what SQLite says it will do with each statement."""
    store.enqueue([new("a1", queue="a"), new("a2", queue="a", priority=2, eta=NOW + 9),
                   new("b1", queue="b", priority=1, eta=NOW - 1, enqueued_at=NOW - 2)])
    store.has_due(mode="process", queues=queues, now=NOW, isolated=isolated)
    store.next_due(mode="process", queues=queues, now=NOW)
    claim_ids(store, queues=queues, isolated=isolated)
    conn = sqlite3.connect(db_path)
    try:
        for plan in store._plans.values():  # noqa: SLF001 - the plans these calls made
            statements = plan.statements()
            names = {name for name, _, _ in statements}
            assert {"due", "next_eta", "candidates", "stale"} <= names
            assert ("claim" in names) == bool(plan.queues)
            for name, sql, n in statements:
                lines = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (None,) * n)]
                assert not [line for line in lines if line.startswith("SCAN castor_tasks")], (name, lines)
                seeks = [line for line in lines if line.startswith("SEARCH castor_tasks")]
                assert seeks, (name, lines)
                for line in seeks:
                    # The claim's UPDATE finds the rows it picked by their id.
                    by_id = name == "claim" and line == "SEARCH castor_tasks USING PRIMARY KEY (id=?)"
                    assert by_id or line.startswith("SEARCH castor_tasks USING COVERING INDEX castor_tasks_ready ("), (
                        name, line)
    finally:
        conn.close()


# -- a file from schema v4 ------------------------------------------------------------


def v4_file(path):
    """A database as castor with schema v4 left it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE castor_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for step in MIGRATIONS[:4]:
        for statement in step:
            conn.execute(statement)
    conn.execute("INSERT INTO castor_meta VALUES ('schema_version', '4')")
    return conn


def test_a_v4_files_pending_tasks_are_claimed_in_the_same_order_after_the_migration(db_path):
    conn = v4_file(db_path)
    rows = [  # id, queue, priority, eta, enqueued_at, at_once, status, lost
        ("p0-now", "default", 0, 990.0, 990.0, 1, "pending", 0),
        ("p0-eta", "default", 0, 980.0, 900.0, 0, "pending", 0),
        ("p2-other", "other", 2, 995.0, 995.0, 1, "pending", 0),
        ("p2-later", "default", 2, 1100.0, 900.0, 0, "pending", 0),
        ("stepped", "default", 0, 1010.0, 1010.0, 1, "pending", 0),  # queued at once before a step back
        ("done", "default", 0, 900.0, 900.0, 1, "success", 1),
    ]
    conn.executemany(
        "INSERT INTO castor_tasks (id, task_name, queue, mode, status, priority, serializer, args, kwargs, "
        "enqueued_at, eta, at_once, lost) VALUES (?, 't', ?, 'process', ?, ?, 'json', '[]', '{}', ?, ?, ?, ?)",
        [(i, q, s, p, enq, eta, a, lost) for i, q, p, eta, enq, a, s, lost in rows])
    conn.close()
    store = open_store(db_path)
    store.clock = lambda: NOW
    try:
        check = sqlite3.connect(db_path)
        version = check.execute("SELECT value FROM castor_meta WHERE key = 'schema_version'").fetchone()[0]
        indexes = dict(check.execute("SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL"))
        check.close()
        assert int(version) == SCHEMA_VERSION == 11  # v5 ready index, v6 pauses, v7 listing, v8 rate limits, v9 failed names, v10 concurrency limits, v11 workflows
        assert "queue, at_once, priority DESC, eta, status" in indexes["castor_tasks_ready"]
        assert "castor_tasks_dirty" in indexes and "castor_tasks_listing" in indexes
        assert store.pending_by_queue() == {"default": 4, "other": 1}
        assert store.count(Query(dirty=True)) == 1
        assert drain(store) == ["p2-other", "p0-eta", "p0-now", "stepped"]
        assert store.next_due(mode="process", now=NOW) == 1100.0
    finally:
        store.close()
