"""PostgreSQL-only store behaviour (the generic contract is tests/contract): the server's
clock, connection failures, forks, racing claims on separate connections.

Runs against the server at $CASTOR_TEST_POSTGRES_URL, each test in a fresh schema."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from urllib.parse import quote

import pytest

from castor.errors import ConfigurationError, StoreError, StoreUnavailable
from castor.states import TaskStatus
from castor.store import Query, open_store, pg_schema
from castor.store.base import Settlement
from tests.conftest import wait_until
from tests.contract.builders import new
from tests.contract.conftest import postgresql_location

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def location(request: pytest.FixtureRequest, postgres_url: str) -> str:
    return postgresql_location(request)


@pytest.fixture
def opened(location):
    stores = []

    def open_one():
        store = open_store(location)
        stores.append(store)
        return store

    yield open_one
    for store in stores:
        store.close()


def test_leases_run_on_the_servers_clock_by_default(opened):
    store = opened()
    assert store.clock() == pytest.approx(time.time(), abs=5.0)  # the server is on this host
    store.enqueue([new("a", now=time.time())])
    (rec,) = store.claim("w", mode="process", queues=None, limit=1, lease=0.3, now=time.time())
    assert rec.lease_expires == pytest.approx(time.time() + 0.3, abs=5.0)
    assert store.next_due(mode="process", now=time.time()) == pytest.approx(time.time() + 0.3, abs=5.0)
    assert store.renew([rec.claim], lease=60.0) == {rec.claim}
    assert store.recover_expired(now=time.time(), max_lost=3) == []
    assert store.renew([rec.claim], lease=0.2) == {rec.claim}
    (back,) = wait_until(lambda: store.recover_expired(now=time.time(), max_lost=3), 10, "the lease to expire")
    assert (back.id, back.status, back.lost) == ("a", TaskStatus.PENDING, 1)


def test_heartbeat_ages_run_on_the_servers_clock(opened):
    store = opened()
    store.record_daemon("d", host="h", pid=1, app="a:m", started_at=time.time(), info={}, now=time.time())
    (row,) = store.daemons()
    assert 0 <= row["heartbeat_age"] < 5


@pytest.mark.timeout(120)
def test_claims_racing_on_separate_connections_never_share_a_task(opened):
    tasks, workers = 400, 4
    opened().enqueue([new(f"t{i:04}") for i in range(tasks)])
    stores = [opened() for _ in range(workers)]
    start = threading.Barrier(workers)
    claimed: list[list[str]] = [[] for _ in range(workers)]

    def drain(k: int) -> None:
        store = stores[k]
        start.wait(30)
        while batch := store.claim(f"w{k}", mode="process", queues=None, limit=3, lease=60.0, now=time.time()):
            claimed[k].extend(r.id for r in batch)

    threads = [threading.Thread(target=drain, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    counts = Counter(i for ids in claimed for i in ids)
    assert [i for i, n in counts.items() if n > 1] == []
    assert len(counts) == tasks
    assert stores[0].count(Query(status=TaskStatus.RUNNING)) == tasks


def test_an_unreachable_server_is_store_unavailable(tmp_path):
    with pytest.raises(StoreUnavailable, match="cannot connect to PostgreSQL"):
        open_store(f"postgresql://castor@/postgres?host={tmp_path}&connect_timeout=2")


def test_a_url_psycopg_cannot_read_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="not a usable PostgreSQL URL"):
        open_store("postgresql://castor@/postgres?no_such_parameter=1")


def test_a_search_path_with_no_schema_is_refused_with_the_fix(postgres_url):
    url = postgres_url
    with pytest.raises(StoreError, match="search_path"):
        open_store(url + ("&" if "?" in url else "?") + "options=-csearch_path%3Dno_such_schema_here")


def end_backends(postgres_url: str, pids: set[int]) -> None:
    """End these server backends, as a restart ends every one."""
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_connection_the_server_ends_is_store_unavailable_and_the_next_call_reconnects(opened, postgres_url):
    store = opened()
    store.enqueue([new("a")])
    pids = {row[0] for row in store._fetch("SELECT pg_backend_pid()")}  # noqa: SLF001 - the pooled connection
    end_backends(postgres_url, pids)
    with pytest.raises(StoreUnavailable, match="cannot answer now"):
        store.get("a")
    assert store.status("a") == TaskStatus.PENDING


@pytest.mark.timeout(60)
def test_after_a_restart_one_call_fails_not_one_per_pooled_connection(opened, postgres_url):
    """Every idle pooled connection died with the server's backends (a restart, a
    failover): the first call that meets one is StoreUnavailable, and the store drops
    the others with it, so the next call works (a worker logs one outage, not one more
    after the server is back)."""
    store = opened()
    store.enqueue([new("a")])
    start = threading.Barrier(4)
    pids: set[int] = set()

    def hold_one() -> None:
        start.wait()
        pids.update(r[0] for r in store._fetch("SELECT pg_backend_pid() FROM pg_sleep(0.3)"))  # noqa: SLF001

    threads = [threading.Thread(target=hold_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(pids) == 4  # four connections, now idle in the pool
    end_backends(postgres_url, pids)
    with pytest.raises(StoreUnavailable, match="cannot answer now"):
        store.get("a")
    assert store.status("a") == TaskStatus.PENDING
    assert store.get("a") is not None


@pytest.mark.timeout(60)
def test_a_forked_child_leaves_the_parents_connections_alone(opened):
    store = opened()
    store.enqueue([new("parent")])
    listening = store.generation()  # the listener's connection is inherited too
    pid = os.fork()
    if pid == 0:  # the child: use the store (new connections), then drop what it inherited
        code = 1
        try:
            store.enqueue([new("child")])
            store.close()
            import gc

            gc.collect()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's pooled connection and its LISTEN connection still work.
    assert store.status("child") == TaskStatus.PENDING
    other = opened()
    other.enqueue([new("after")])
    assert store.wait_for_change(listening, 30) > listening


def _open_and_report(location: str, start, results) -> None:  # noqa: ANN001 - multiprocessing primitives
    import castor.store.postgresql  # noqa: F401 - imported first, so that the opens start together

    start.wait(60)
    try:
        open_store(location).close()
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.timeout(120)
def test_processes_opening_a_new_schema_at_once_migrate_it_once(location):
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Event(), spawn.Queue()
    procs = [spawn.Process(target=_open_and_report, args=(location, start, results), daemon=True) for _ in range(4)]
    for proc in procs:
        proc.start()
    try:
        start.set()
        reports = [results.get(timeout=90) for _ in procs]
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    assert reports == ["ok"] * 4
    with psycopg.connect(location, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM castor_meta WHERE key = 'schema_version'").fetchall() == [
            (str(pg_schema.SCHEMA_VERSION),)]


def test_a_schema_of_an_older_castor_is_migrated_forward_keeping_its_tasks(location):
    """Version 1's tables (the first release's) with a task in them: opened by this castor,
    they gain what later versions add, and the task runs."""
    with psycopg.connect(location, autocommit=True) as conn, conn.transaction():
        conn.execute(pg_schema.META_DDL)
        for statement in pg_schema.MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO castor_meta VALUES ('schema_version', '1')")
    old = open_store(location)  # migrates
    try:
        with psycopg.connect(location, autocommit=True) as conn:
            assert conn.execute("SELECT value FROM castor_meta").fetchall() == [(str(pg_schema.SCHEMA_VERSION),)]
        old.enqueue([new("a")])
        (record,) = old.claim("w", mode="process", queues=None, limit=1, lease=30.0, now=time.time())
        assert record.id == "a"
        with psycopg.connect(location, autocommit=True) as conn:
            options = conn.execute("SELECT reloptions FROM pg_class WHERE oid = 'castor_tasks'::regclass").fetchone()[0]
        assert "autovacuum_vacuum_scale_factor=0" in options  # version 2's vacuum settings
    finally:
        old.close()


def test_a_schema_from_a_newer_castor_is_refused(opened, location):
    opened().close()
    with psycopg.connect(location, autocommit=True) as conn:
        conn.execute("UPDATE castor_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer than this castor understands"):
        open_store(location)


def test_a_manager_on_postgresql_has_no_beaver_file_unless_given_one(postgres_db_url, tmp_path):
    import castor

    on_server = castor.Manager(postgres_db_url)
    try:
        assert on_server.store.url == postgres_db_url
        with pytest.raises(ConfigurationError, match="has no beaver-db file for .db"):
            on_server.db  # noqa: B018 - the property is the call
    finally:
        on_server.close()
    both = castor.Manager(str(tmp_path / "app.db"), store=postgres_db_url)
    try:
        both.db.dict("settings")["theme"] = "dark"  # the app's file
        assert both.store.url == postgres_db_url  # the tasks' server
    finally:
        both.close()


def claim_params(now: float, *, mode: str = "process", limit: int = 10) -> dict:
    """Bind values for castor.store.postgresql's claim statement, as a worker sends them."""
    return {"owner": "w", "lease": 10.0, "now": now, "mode": mode, "isolate": False, "limit": limit, "clock": None}


def claim_plan(location: str, now: float) -> str:
    """EXPLAIN of the claim (not run) on fresh statistics, as text. Sequential scans are
    off: a table as small as a test's would be scanned whatever the query."""
    from castor.store.postgresql import _CLAIM_ANY

    with psycopg.connect(location, autocommit=True) as conn:
        conn.execute("ANALYZE castor_tasks")
        conn.execute("SET enable_seqscan = off")
        with conn.transaction(force_rollback=True):
            return "\n".join(row[0] for row in conn.execute("EXPLAIN " + _CLAIM_ANY, claim_params(now)))


def test_a_claim_skipping_paused_queues_still_walks_the_ready_index(opened, location):
    """The pause filter is an InitPlan (one read of castor_pauses per claim), not a join
    that would make the planner give up castor_tasks_ready."""
    store = opened()
    now = time.time()
    store.enqueue([new(f"t{i}", now=now, queue=f"q{i % 5}") for i in range(200)])
    store.pause_queue("q1")
    plan = claim_plan(location, now)
    assert "castor_tasks_ready" in plan, plan
    assert "castor_pauses" in plan and "InitPlan" in plan, plan
    claimed = store.claim("w", mode="process", queues=None, limit=200, lease=10.0, now=now)
    assert len(claimed) == 160 and {r.queue for r in claimed} == {"q0", "q2", "q3", "q4"}


def _index_scans(node: dict) -> list[tuple[str, str]]:
    """(index, condition) of every index scan in an EXPLAIN (FORMAT JSON) plan."""
    found = []
    if "Index Name" in node:
        found.append((node["Index Name"], node.get("Index Cond", "")))
    for child in node.get("Plans", []):
        found += _index_scans(child)
    return found


@pytest.mark.timeout(120)
def test_a_claim_finds_its_rows_by_primary_key_however_stale_the_statistics(opened, location):
    """The claim's outer UPDATE looks its locked ids up in the primary key. With an
    outer "status = 'pending'" as well, a planner without statistics (a table just
    filled, not yet analyzed) read castor_tasks_ready whole for them: at a backlog of
    10,000 each claim of 33 cost 6 ms instead of 0.3, and more as the backlog grew."""
    from castor.store.postgresql import _CLAIM_ANY

    store = opened()
    now = time.time()
    with psycopg.connect(location, autocommit=True) as conn:
        conn.execute("ALTER TABLE castor_tasks SET (autovacuum_enabled = false)")  # no statistics
    store.enqueue([new(f"t{i:05d}", now=now, mode="thread") for i in range(10_000)])
    for _ in range(3):
        store.claim("w", mode="thread", queues=None, limit=33, lease=10.0, now=now)
    with psycopg.connect(location, autocommit=True) as conn, conn.transaction(force_rollback=True):
        ((plan,),) = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + _CLAIM_ANY, claim_params(now, mode="thread", limit=33)).fetchall()
    scans = _index_scans(plan[0]["Plan"])
    # The inner SELECT walks castor_tasks_ready in order; the outer finds the ids by key.
    assert any(index == "castor_tasks_pkey" and "id = ANY" in cond for index, cond in scans), scans
    assert [index for index, _ in scans].count("castor_tasks_ready") == 1, scans


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["settle_one", "settle_and_claim"])
def test_a_settle_the_server_refuses_writes_nothing_and_the_store_goes_on(opened, call):
    """Settles go in one round trip (BEGIN ... COMMIT in a pipeline): when the server
    refuses one, the others of its transaction are not written either, and the next
    call works (the connection left in the failed transaction is not reused)."""

    store = opened()
    now = time.time()
    store.enqueue([new("a", now=now), new("b", now=now)])
    a, b = store.claim("w", mode="process", queues=None, limit=2, lease=30.0, now=now)
    good = Settlement(a.id, "w", a.attempts, TaskStatus.SUCCESS, result="1", finished_at=now, fence=a.fence)
    # jsonb cannot hold a NUL character: the server refuses this one.
    bad = Settlement(b.id, "w", b.attempts, TaskStatus.FAILED, error={"message": "nul \x00 here"},
                     finished_at=now, fence=b.fence)
    with pytest.raises(StoreError):
        if call == "settle_one":
            store.settle_one(bad)
        else:
            store.settle_and_claim([good, bad], "w", mode="process", queues=None, limit=1, lease=30.0, now=now)
    assert (store.status("a"), store.status("b")) == (TaskStatus.RUNNING, TaskStatus.RUNNING)
    assert store.settle_and_claim([good], "w", mode="process", queues=None, limit=1, lease=30.0,
                                  now=now) == ([True], [])
    assert store.settle_one(Settlement(b.id, "w", b.attempts, TaskStatus.SUCCESS, result="2", finished_at=now,
                                       fence=b.fence))
    assert (store.status("a"), store.status("b")) == (TaskStatus.SUCCESS, TaskStatus.SUCCESS)


@pytest.mark.timeout(120)
def test_the_dashboards_counts_read_indexes_not_the_table(opened, location):
    """Per-queue depth, the oldest due task and failures by name are read from indexes
    alone (schema v5: the ready index carries queue and at_once; failed rows have an
    index by name): at a million tasks they took 175-200 ms each reading the table."""
    store = opened()
    now = time.time()
    store.enqueue([new(f"t{i:05d}", now=now, queue=f"q{i % 3}", name=f"n{i % 4}") for i in range(3000)])
    for record in store.claim("w", mode="process", queues=None, limit=300, lease=30.0, now=now):
        store.settle_one(Settlement(record.id, "w", record.attempts, TaskStatus.FAILED,
                                    error={"type": "ValueError", "message": "x"}, finished_at=now,
                                    fence=record.fence))
    statements = {
        "pending by queue": "SELECT queue, count(*) FROM castor_tasks WHERE status = 'pending' GROUP BY queue",
        "queue stats": ("SELECT count(*) FILTER (WHERE NOT at_once AND eta > 0), min(eta) FILTER "
                        "(WHERE at_once OR eta <= 0) FROM castor_tasks WHERE status = 'pending'"),
        "failed by name": "SELECT task_name, count(*) FROM castor_tasks WHERE status = 'failed' GROUP BY task_name",
    }
    with psycopg.connect(location, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE castor_tasks")  # index-only scans need the visibility map
        conn.execute("SET enable_seqscan = off")  # a table this small would be scanned whatever the indexes
        conn.execute("SET enable_bitmapscan = off")
        for what, sql in statements.items():
            plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql))
            assert "Index Only Scan" in plan, f"{what}:\n{plan}"
    assert store.pending_by_queue() == {"q0": 900, "q1": 900, "q2": 900}
    assert store.counts_by_status()[TaskStatus.FAILED] == 300
    assert store.queue_stats(now=now)["failed_by_name"] == {"n0": 75, "n1": 75, "n2": 75, "n3": 75}


@pytest.mark.timeout(60)
def test_a_connection_in_use_while_another_met_an_outage_is_not_pooled_again(opened, location):
    """After a server restart every connection to it is dead, the ones other threads were
    using too: given back, they are closed, not pooled (each would fail once more after
    the server is back, and a worker would say a second time that it waits)."""
    store = opened()
    with store._session() as busy:  # another thread's, in the middle of its work
        busy.execute("SELECT 1")
        with store._session() as victim:
            pid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(location, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StoreUnavailable):
            with store._session() as dead:  # the pooled victim, now dead: the outage is seen
                dead.execute("SELECT 1")
    assert busy not in store._idle and busy.closed
    assert store.get("nothing") is None  # the store goes on, on a new connection


def test_a_screen_gets_big_finished_counts_from_the_statistics_and_the_rest_exact(opened, location):
    store = opened()
    now = time.time()
    store.enqueue([new(f"t{i:03d}", now=now) for i in range(90)])
    for record in store.claim("w", mode="process", queues=None, limit=60, lease=30.0, now=now):
        store.settle_one(Settlement(record.id, "w", record.attempts, TaskStatus.SUCCESS, result="1",
                                    finished_at=now, fence=record.fence))
    with psycopg.connect(location, autocommit=True) as conn:
        conn.execute("ALTER TABLE castor_tasks SET (autovacuum_enabled = false)")
    # Not analyzed yet: the statistics know nothing, so the big count is counted.
    assert store.estimated_counts_by_status(exact_up_to=10)[TaskStatus.SUCCESS] == (60, False)
    with psycopg.connect(location, autocommit=True) as conn:
        conn.execute("ANALYZE castor_tasks")  # samples every row of a table this small
    counts = store.estimated_counts_by_status(exact_up_to=10)
    assert counts[TaskStatus.SUCCESS] == (60, True)
    assert counts[TaskStatus.PENDING] == (30, False)  # over the limit, but never estimated
    assert counts[TaskStatus.FAILED] == (0, False)


def test_the_pending_counts_walk_the_ready_index_whatever_the_planner_thinks_it_costs(opened, location,
                                                                                      monkeypatch, request):
    """After a big backlog the ready index keeps its pages and the planner, costing it
    by them, scanned the whole table for the screens' pending counts. Here the planner
    is made to think index pages dear (random_page_cost, for this test's connections only:
    set on the database, it reached every test after it on the same server); the reads
    still take the index."""
    store = opened()
    now = time.time()
    store.enqueue([new(f"t{i:04d}", now=now, queue=f"q{i % 3}") for i in range(2000)])
    with psycopg.connect(location, autocommit=True) as conn:
        conn.execute("ANALYZE castor_tasks")
    store.close()
    location = location.replace("options=", "options=" + quote("-crandom_page_cost=1000 "), 1)
    store = open_store(location)  # its connections think index pages dear
    request.addfinalizer(store.close)
    statements: list[tuple[str, object]] = []
    by_index = store._fetch_by_index

    def recording(sql, params=None):
        statements.append((sql, params))
        return by_index(sql, params)

    monkeypatch.setattr(store, "_fetch_by_index", recording)
    assert store.pending_by_queue() == {"q0": 667, "q1": 667, "q2": 666}
    assert store.counts_by_status()[TaskStatus.PENDING] == 2000
    assert store.queue_stats(now=now)["scheduled"] == 0
    assert len(statements) == 4  # every read of the three (queue_stats has two)
    with psycopg.connect(location, autocommit=True) as conn:
        sql, params = statements[0]
        plain = "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql, params))
    assert "Seq Scan" in plain, plain  # what the planner picks by itself here
    for sql, params in statements:
        plan = "\n".join(row[0] for row in by_index("EXPLAIN " + sql, params))
        assert "Seq Scan" not in plan and "castor_tasks_" in plan, plan
