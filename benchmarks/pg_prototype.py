"""Facts to design castor's PostgreSQL store against (issue 14), from a standalone schema.

    .venv/bin/python benchmarks/pg_prototype.py [--runs 3] [--url postgresql://...]
        [--only insert,copy,claim1,batch,plans,wake,notify] [--inserts 2000] [--copy-rows 100000]
        [--claim-one 2000] [--batch-rows 20000] [--backlog 3000] [--plan-execs 200] [--wakes 300]
        [--notify-inserts 1000]

No castor code runs here: a `tasks` table shaped like castor's (castor/store/schema.py:
the same columns and the same two partial indexes, PostgreSQL types) and the statements
a PostgreSQL store would send, through psycopg 3. The server is a private throwaway one
(tests/postgres.py's `ThrowawayServer(fsync=True)`: PostgreSQL's default settings, fsync
on, so every durable commit waits for the disk), or `--url` (its role needs CREATEDB).
Each workload gets a fresh database. Prints a table per run and the medians.

Workloads (`--only` names)
--------------------------
* insert: one INSERT + COMMIT per task, a durable `.delay()`'s floor, tasks/s.
* copy: `COPY tasks FROM STDIN` of --copy-rows rows in one transaction, rows/s.
* claim1: one task claimed in its own transaction, then settled in its own, tasks/s;
  with `synchronous_commit` on, and off (the worker side may: a lost settle is a re-run).
* batch: claim 10 / 50 at a time (`FOR UPDATE SKIP LOCKED`), settle them in one fenced
  statement (`UPDATE ... FROM unnest(ids, results) ... AND owner = me`), tasks/s, for both
  claim forms below, synchronous_commit off.
* plans: the generic-plan trap. With the LIMIT a bind parameter, psycopg prepares a
  statement after 5 executions (`prepare_threshold`), and the server may then switch it to
  a generic plan, costed without the parameters' values. Two claim forms:
    any-array: `UPDATE ... WHERE id = ANY(ARRAY(SELECT id ... LIMIT %s FOR UPDATE SKIP LOCKED))`
    cte-join:  `WITH c AS (SELECT id ... LIMIT %s FOR UPDATE SKIP LOCKED) UPDATE ... FROM c WHERE t.id = c.id`
  Each runs --plan-execs times, with plan_cache_mode `auto` (the server's default: what it
  picks) and `force_generic_plan` (the trap, where the server picks the generic plan), on a
  table ANALYZEd after loading and on one without statistics (autovacuum not yet by), on a
  steady --backlog of pending rows (claim 10 and commit,
  timed; then settle them and queue 10 more, untimed, so finished rows pile up beside the
  backlog as they do until a TTL purges them), p50/p99 ms per claim statement; then how
  many generic and custom plans the server used for it (pg_prepared_statements), and
  EXPLAIN ANALYZE of its generic plan (plan_cache_mode = force_generic_plan, rolled back;
  printed in the first run).
  Never a rollback between claims: psycopg drops all its prepared statements on ROLLBACK.
* wake: commit -> wake latency. A worker process LISTENs on one connection and claims on
  another; this process inserts a task and NOTIFYs in one durable transaction, then waits
  for the worker's report before the next (2 ms apart). Two intervals, from just before
  the producer's COMMIT (CLOCK_MONOTONIC is one clock for both processes): to the worker
  holding the notification ("wake"), and to its claim committed ("claimed"); p50/p99 ms,
  with the worker's synchronous_commit on, and off.
* notify: what a NOTIFY per durable INSERT costs the producers. 1 and 8 producer threads
  (each its own connection) insert --notify-inserts rows each, one durable autocommit
  statement per row, while another connection LISTENs (so every notification is queued
  and delivered): the INSERT alone, and `WITH new AS (INSERT ...) SELECT pg_notify(...)`
  (castor's .delay() statement); total rows/s. PostgreSQL serializes the commits of
  notifying transactions (one lock on the notification queue, held through the commit's
  WAL flush), so concurrent producers lose group commit when each one notifies.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.postgres import TestPostgres, ThrowawayServer  # noqa: E402

SCHEMA = [
    """
    CREATE TABLE tasks (
        id            text PRIMARY KEY,
        task_name     text NOT NULL,
        queue         text NOT NULL DEFAULT 'default',
        mode          text NOT NULL,
        daemon        boolean NOT NULL DEFAULT false,
        status        text NOT NULL,
        priority      integer NOT NULL DEFAULT 0,
        serializer    text NOT NULL,
        args          bytea,
        kwargs        bytea,
        enqueued_at   double precision NOT NULL,
        eta           double precision NOT NULL,
        started_at    double precision,
        finished_at   double precision,
        result        bytea,
        error         text,
        attempts      integer NOT NULL DEFAULT 0,
        lost          integer NOT NULL DEFAULT 0,
        owner         text,
        lease_expires double precision,
        options       jsonb
    )
    """,
    "CREATE INDEX tasks_ready ON tasks (mode, priority DESC, eta) WHERE status = 'pending'",
    "CREATE INDEX tasks_status ON tasks (status, mode, eta) WHERE status <> 'pending'",
]

COLUMNS = ("id", "task_name", "mode", "status", "serializer", "args", "kwargs", "enqueued_at", "eta")
INSERT = f"INSERT INTO tasks ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
NOW = "extract(epoch FROM clock_timestamp())"  # the server's clock, as the store would use
ARGS = b"\x80\x05K\x01\x85."  # a pickled (1,): a no-op task's arguments

_DUE = "SELECT id FROM tasks WHERE status = 'pending' AND mode = %(mode)s AND eta <= " + NOW + \
       " ORDER BY priority DESC, eta LIMIT %(n)s FOR UPDATE SKIP LOCKED"
_SET_RUNNING = f"""status = 'running', owner = %(owner)s, attempts = attempts + 1,
    started_at = {NOW}, lease_expires = {NOW} + 60"""
CLAIMS = {
    "any-array": f"UPDATE tasks SET {_SET_RUNNING} WHERE id = ANY(ARRAY({_DUE})) RETURNING id, args",
    "cte-join": f"WITH c AS ({_DUE}) UPDATE tasks t SET {_SET_RUNNING} FROM c WHERE t.id = c.id RETURNING t.id, t.args",
}
SETTLE = f"""UPDATE tasks t SET status = 'success', finished_at = {NOW}, result = v.result,
    owner = NULL, lease_expires = NULL
    FROM unnest(%(ids)s::text[], %(results)s::bytea[]) AS v(id, result)
    WHERE t.id = v.id AND t.owner = %(owner)s AND t.status = 'running'"""
OWNER = "bench-host:1:abcd"


def task_row(i: int, now: float) -> tuple[Any, ...]:
    return (f"{now:017.6f}-{i:08d}", "noop", "process", "pending", "pickle", ARGS, None, now, now)


# --- Where it runs ----------------------------------------------------------------------

class Target:
    """The server, and a fresh database per workload."""

    def __init__(self, url: str | None):
        self.server: ThrowawayServer | None = None
        if url is None:
            self.server = ThrowawayServer(fsync=True)
            self.server.start()
            url = self.server.url()
        self.pg = TestPostgres(url, self.server)

    @contextmanager
    def database(self) -> Iterator[str]:
        with self.pg.database() as url:
            with psycopg.connect(url, autocommit=True) as conn:
                for ddl in SCHEMA:
                    conn.execute(ddl)
            yield url

    def settings(self) -> dict[str, str]:
        names = ("server_version", "fsync", "synchronous_commit", "wal_level", "shared_buffers", "max_wal_size")
        with psycopg.connect(self.pg.url) as conn:
            return {n: conn.execute(f"SHOW {n}").fetchone()[0] for n in names}  # type: ignore[index]

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def fill(url: str, rows: int, analyze: bool = True) -> None:
    now = time.time() - 1
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY tasks ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for i in range(rows):
                copy.write_row(task_row(i, now))
    if analyze:  # as autovacuum would soon after; without, the planner guesses the row counts
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE tasks")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- Workloads: each returns {figure name: value} ---------------------------------------

def bench_insert(target: Target, n: int) -> dict[str, float]:
    with target.database() as url, psycopg.connect(url) as conn:
        now = time.time()
        start = time.perf_counter()
        for i in range(n):
            conn.execute(INSERT, task_row(i, now))
            conn.commit()
        return {"insert+commit /s": n / (time.perf_counter() - start)}


def bench_copy(target: Target, n: int) -> dict[str, float]:
    with target.database() as url:
        start = time.perf_counter()
        fill_copy_only(url, n)
        return {"COPY rows/s": n / (time.perf_counter() - start)}


def fill_copy_only(url: str, rows: int) -> None:
    now = time.time()
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY tasks ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for i in range(rows):
                copy.write_row(task_row(i, now))


def claim_and_settle(conn: psycopg.Connection[Any], claim: str, n: int) -> int:
    rows = conn.execute(claim, {"mode": "process", "n": n, "owner": OWNER}).fetchall()
    conn.commit()
    if rows:
        conn.execute(SETTLE, {"ids": [r[0] for r in rows], "results": [b"N." for _ in rows], "owner": OWNER})
        conn.commit()
    return len(rows)


def drain(url: str, claim: str, n: int, synchronous_commit: str) -> float:
    """Claim `n` at a time and settle until no task is pending; tasks/s."""
    with psycopg.connect(url) as conn:
        conn.execute(f"SET synchronous_commit = {synchronous_commit}")
        conn.commit()
        done = 0
        start = time.perf_counter()
        while (got := claim_and_settle(conn, claim, n)):
            done += got
        return done / (time.perf_counter() - start)


def bench_claim_one(target: Target, n: int) -> dict[str, float]:
    out = {}
    for sync in ("on", "off"):
        with target.database() as url:
            fill(url, n)
            out[f"claim+settle 1/txn, sync {sync} /s"] = drain(url, CLAIMS["any-array"], 1, sync)
    return out


def bench_batches(target: Target, rows: int) -> dict[str, float]:
    out = {}
    for size in (10, 50):
        for form, claim in CLAIMS.items():
            with target.database() as url:
                fill(url, rows)
                out[f"batch {size} ({form}) /s"] = drain(url, claim, size, "off")
    return out


def bench_plans(target: Target, backlog: int, execs: int) -> tuple[dict[str, float], dict[str, str]]:
    out: dict[str, float] = {}
    explains = {}
    for stats in ("analyzed", "no stats"):
        for mode in ("auto", "force_generic_plan"):
            for form, claim in CLAIMS.items():
                label = f"claim 10 ({form}, {mode}, {stats})"
                with target.database() as url:
                    fill(url, backlog, analyze=stats == "analyzed")
                    with psycopg.connect(url) as conn:
                        conn.execute(f"SET plan_cache_mode = {mode}")
                        times, plans = steady_claims(conn, claim, backlog, execs)
                        out[f"{label} p50 ms"] = percentile(times, 0.5)
                        out[f"{label} p99 ms"] = percentile(times, 0.99)
                        out[f"{label} generic plans"] = plans[0]
                        out[f"{label} custom plans"] = plans[1]
                        if mode == "auto":
                            explains[f"{form}, {stats}"] = explain_generic(conn, claim)
    return out, explains


def steady_claims(conn: psycopg.Connection[Any], claim: str, backlog: int,
                  execs: int) -> tuple[list[float], tuple[int, int]]:
    """Claim 10 `execs` times on a steady backlog; ms per claim, and (generic, custom) plans used."""
    conn.execute("SET synchronous_commit = off")
    conn.commit()
    params = {"mode": "process", "n": 10, "owner": OWNER}
    times = []
    now = time.time() - 1
    for i in range(execs):
        start = time.perf_counter()
        got = conn.execute(claim, params).fetchall()
        times.append((time.perf_counter() - start) * 1000)
        assert len(got) == 10, got
        # Commit, never roll back: psycopg forgets every prepared statement on
        # ROLLBACK (DEALLOCATE ALL), and the claim would never reach a generic plan.
        conn.commit()
        conn.execute(SETTLE, {"ids": [r[0] for r in got], "results": [b"N."] * 10, "owner": OWNER})
        conn.cursor().executemany(INSERT, [task_row(backlog + 10 * i + k, now) for k in range(10)])
        conn.commit()
    row = conn.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                       "WHERE statement LIKE '%SKIP LOCKED%'").fetchone()
    conn.commit()
    return times, (row[0], row[1]) if row else (0, 0)


def explain_generic(conn: psycopg.Connection[Any], claim: str) -> str:
    """EXPLAIN ANALYZE of the generic plan for `claim` (executed, then rolled back)."""
    positional = claim.replace("%(mode)s", "$1").replace("%(n)s", "$2").replace("%(owner)s", "$3")
    conn.execute(f"PREPARE claim_q (text, integer, text) AS {positional}")
    conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    explain = sql.SQL("EXPLAIN (ANALYZE, TIMING false) EXECUTE claim_q ({}, {}, {})").format(
        sql.Literal("process"), sql.Literal(10), sql.Literal(OWNER))
    rows = conn.execute(explain).fetchall()
    conn.rollback()  # psycopg then sends DEALLOCATE ALL, claim_q with the rest
    return "\n".join(r[0] for r in rows)


def wake_worker(url: str, synchronous_commit: str, ready: Any, reports: Any) -> None:
    """The worker side: LISTEN on one connection, claim on another, report each claim's times."""
    with psycopg.connect(url, autocommit=True) as listener, psycopg.connect(url) as work:
        work.execute(f"SET synchronous_commit = {synchronous_commit}")
        work.commit()
        listener.execute("LISTEN castor_wake")
        ready.send("ready")
        for _note in listener.notifies():
            woke = time.monotonic()
            rows = work.execute(CLAIMS["any-array"], {"mode": "process", "n": 1, "owner": OWNER}).fetchall()
            work.commit()
            claimed = time.monotonic()
            reports.send((len(rows), woke, claimed))
            if rows and rows[0][1] == b"stop":
                return


def bench_wake(target: Target, n: int) -> dict[str, float]:
    out = {}
    ctx = multiprocessing.get_context("spawn")
    for sync in ("on", "off"):
        with target.database() as url:
            ready_r, ready_w = ctx.Pipe(duplex=False)
            rep_r, rep_w = ctx.Pipe(duplex=False)
            worker = ctx.Process(target=wake_worker, args=(url, sync, ready_w, rep_w), daemon=True)
            worker.start()
            try:
                if not ready_r.poll(60):
                    raise RuntimeError("the wake worker did not start within 60 s")
                ready_r.recv()
                wakes, claims = [], []
                with psycopg.connect(url) as conn:
                    now = time.time()
                    for i in range(n + 1):
                        row = list(task_row(i, now))
                        if i == n:
                            row[5] = b"stop"
                        conn.execute(INSERT, row)
                        conn.execute("NOTIFY castor_wake, 'process'")
                        before_commit = time.monotonic()
                        conn.commit()
                        if not rep_r.poll(30):
                            raise RuntimeError(f"no claim reported 30 s after task {i}'s commit")
                        got, woke, claimed = rep_r.recv()
                        assert got == 1, f"the worker woke but claimed {got} tasks"
                        if i < n:
                            wakes.append((woke - before_commit) * 1000)
                            claims.append((claimed - before_commit) * 1000)
                        time.sleep(0.002)
                worker.join(30)
            finally:
                if worker.is_alive():
                    worker.kill()  # our own child, by its handle
                    worker.join(10)
            for name, values in (("wake", wakes), ("claimed", claims)):
                out[f"commit->{name}, worker sync {sync} p50 ms"] = percentile(values, 0.5)
                out[f"commit->{name}, worker sync {sync} p99 ms"] = percentile(values, 0.99)
    return out


# --- Running ----------------------------------------------------------------------------

def produce(conn: psycopg.Connection[Any], statement: str, offset: int, n: int, now: float, start_line: Any) -> None:
    start_line.wait()
    for i in range(n):
        conn.execute(statement, task_row(offset + i, now))


def bench_notify(target: Target, n: int) -> dict[str, float]:
    import threading

    statements = {
        "insert": INSERT,
        "insert+notify": f"WITH new AS ({INSERT} RETURNING id) SELECT pg_notify('bench', '') FROM new",
    }
    figures = {}
    for threads in (1, 8):
        for form, statement in statements.items():
            with target.database() as url, psycopg.connect(url, autocommit=True) as listener:
                listener.execute("LISTEN bench")
                conns = [psycopg.connect(url, autocommit=True) for _ in range(threads)]
                now = time.time()
                start_line = threading.Barrier(threads + 1)

                workers = [threading.Thread(target=produce, args=(c, statement, k * n, n, now, start_line))
                           for k, c in enumerate(conns)]
                for w in workers:
                    w.start()
                start_line.wait()
                start = time.perf_counter()
                for w in workers:
                    w.join()
                elapsed = time.perf_counter() - start
                for c in conns:
                    c.close()
                figures[f"{threads} producer(s), {form}: rows/s"] = threads * n / elapsed
    return figures


def one_run(target: Target, args: argparse.Namespace, show_explain: bool) -> dict[str, float]:
    figures: dict[str, float] = {}
    steps: dict[str, Callable[[], dict[str, float]]] = {
        "insert": lambda: bench_insert(target, args.inserts),
        "copy": lambda: bench_copy(target, args.copy_rows),
        "claim1": lambda: bench_claim_one(target, args.claim_one),
        "batch": lambda: bench_batches(target, args.batch_rows),
        "wake": lambda: bench_wake(target, args.wakes),
        "notify": lambda: bench_notify(target, args.notify_inserts),
    }
    for name in args.only:
        if name == "plans":
            plans, explains = bench_plans(target, args.backlog, args.plan_execs)
            figures.update(plans)
            if show_explain:
                for form, text in explains.items():
                    print(f"\n-- EXPLAIN ANALYZE, generic plan, {form}, after the steady claims:\n{text}")
        else:
            figures.update(steps[name]())
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", help="an existing server (its role needs CREATEDB); default: a throwaway one")
    parser.add_argument("--only", default="insert,copy,claim1,batch,plans,wake,notify",
                        type=lambda s: [w for w in s.split(",") if w])
    parser.add_argument("--inserts", type=int, default=2000)
    parser.add_argument("--copy-rows", type=int, default=100_000)
    parser.add_argument("--claim-one", type=int, default=2000)
    parser.add_argument("--batch-rows", type=int, default=20_000)
    parser.add_argument("--backlog", type=int, default=3000)
    parser.add_argument("--plan-execs", type=int, default=200)
    parser.add_argument("--wakes", type=int, default=300)
    parser.add_argument("--notify-inserts", type=int, default=1000)
    args = parser.parse_args(argv)
    known = {"insert", "copy", "claim1", "batch", "plans", "wake", "notify"}
    if unknown := set(args.only) - known:
        parser.error(f"--only: unknown workload(s) {', '.join(sorted(unknown))}; choose from {', '.join(sorted(known))}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    target = Target(args.url)
    try:
        print("server:", ", ".join(f"{k}={v}" for k, v in target.settings().items()), f"psycopg {psycopg.__version__}")
        runs = []
        for run in range(args.runs):
            figures = one_run(target, args, show_explain=run == 0)
            runs.append(figures)
            print(f"\nrun {run + 1}: " + "; ".join(f"{k} {v:,.2f}" for k, v in figures.items()), flush=True)
    finally:
        target.close()
    width = max(len(k) for k in runs[0])
    print(f"\n{'figure':<{width}}  {'median':>12}  runs")
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"{key:<{width}}  {statistics.median(values):>12,.2f}  " + "  ".join(f"{v:,.2f}" for v in values))


if __name__ == "__main__":
    main()
