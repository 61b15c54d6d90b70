"""The web dashboard's server time per page with 1,000,000 tasks in the store (issue 15).

    .venv/bin/python benchmarks/web_pages.py [--tasks 1000000] [--runs 5] [--backends sqlite,postgresql]
        [--keep DIR]

For each backend it fills a fresh store, then asks the real ASGI app
(castor.web.dashboard(manager), through Starlette's in-process TestClient: no socket,
so the figure is the server's time plus the client's ~1 ms) for every page, --runs
times, and prints the median and the worst run in ms. Target: every page <= 200 ms.
The live fragments (htmx `every 2s` on the overview, queues and an unfinished task) are
the same GETs with an HX-Request header: the server renders the whole page and the
browser picks #live out of it, so their cost is the page's.

The fill: tasks go in through Store.enqueue (the store's own INSERT, ids UUIDv7 made from
each task's enqueued_at), spread over the last 24 hours, then the finished ones are
settled by one UPDATE per row id in batches (what a worker's settle writes: status,
started_at, finished_at, attempts, result or error and history). The mix: 90% success,
5% failed (two exception types), 1% cancelled, 3% pending and due, 1% scheduled (ETA
in the next hour); 6 task names over 3 queues.

SQLite: a beaver file in a temp dir. PostgreSQL: a private throwaway server
(tests/postgres.py's ThrowawayServer(fsync=True), as compare_pg.py starts it), stopped in
a `finally`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import castor  # noqa: E402
from castor.store import NewTask  # noqa: E402
from castor.web import dashboard  # noqa: E402

NAMES = [("orders.charge", "default"), ("orders.email", "mail"), ("reports.build", "reports"),
         ("orders.refund", "default"), ("mail.digest", "mail"), ("reports.export", "reports")]
BATCH = 50_000
DAY = 86_400.0


def uuid7_at(at: float, rng: random.Random) -> str:
    """A UUIDv7 whose time is `at` (castor/ids.py's layout), so ids sort as enqueued_at does."""
    value = ((int(at * 1000) & 0xFFFF_FFFF_FFFF) << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64)
    value |= (0b10 << 62) | rng.getrandbits(62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def outcome(i: int) -> str:
    r = i % 100
    if r < 90:
        return "success"
    if r < 95:
        return "failed"
    if r < 96:
        return "cancelled"
    if r < 99:
        return "pending"
    return "scheduled"


def plan(n: int, now: float) -> Iterator[tuple[NewTask, str]]:
    rng = random.Random(15)
    start = now - DAY
    step = DAY / n
    for i in range(n):
        at = start + i * step
        kind = outcome(rng.randrange(100))
        name, queue = NAMES[rng.randrange(len(NAMES))]
        eta = now + rng.uniform(60, 3600) if kind == "scheduled" else at
        args = json.dumps([i, f"customer-{i % 5000}"])
        yield NewTask(uuid7_at(at, rng), name, "thread", "json", args, "{}", at, eta, queue=queue), kind


ERRORS = [("ValueError", "card declined"), ("TimeoutError", "smtp timed out")]


def fill(manager: castor.Manager, n: int, settle: Callable[[list[tuple[str, str, float]]], None]) -> None:
    """Enqueue `n` tasks through the store, then settle the finished ones with `settle`."""
    now = time.time()
    batch: list[NewTask] = []
    finished: list[tuple[str, str, float]] = []
    started = time.perf_counter()

    def flush() -> None:
        manager.store.enqueue(batch)
        settle(finished)
        batch.clear()
        finished.clear()

    for task, kind in plan(n, now):
        batch.append(task)
        if kind in ("success", "failed", "cancelled"):
            finished.append((task.id, kind, task.enqueued_at))
        if len(batch) >= BATCH:
            flush()
    flush()
    print(f"  filled {n:,} tasks in {time.perf_counter() - started:.0f} s", flush=True)


def error_for(task_id: str) -> tuple[str, str]:
    exc_type, message = ERRORS[hash(task_id) % 2]
    error = {"type": exc_type, "message": message,
             "traceback": f'Traceback (most recent call last):\n  File "app.py", line 3\n{exc_type}: {message}\n'}
    return json.dumps(error), json.dumps([{"attempt": 1, "at": 0.0, "type": exc_type, "message": message}])


def sqlite_settler(path: str) -> Callable[[list[tuple[str, str, float]]], None]:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)

    def settle(rows: list[tuple[str, str, float]]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        ok, bad = [], []
        for task_id, kind, at in rows:
            if kind == "failed":
                err, hist = error_for(task_id)
                bad.append((kind, at + 0.01, at + 0.05, err, hist, task_id))
            else:
                ok.append((kind, at + 0.01, at + 0.05, "null" if kind == "success" else None, task_id))
        conn.executemany("UPDATE castor_tasks SET status = ?, started_at = ?, finished_at = ?, attempts = 1, "
                         "result = ?, owner = NULL WHERE id = ?", ok)
        conn.executemany("UPDATE castor_tasks SET status = ?, started_at = ?, finished_at = ?, attempts = 1, "
                         "error = ?, history = ?, owner = NULL WHERE id = ?", bad)
        conn.execute("COMMIT")

    return settle


def postgresql_settler(url: str) -> Callable[[list[tuple[str, str, float]]], None]:
    import psycopg

    conn = psycopg.connect(url, autocommit=True)

    def settle(rows: list[tuple[str, str, float]]) -> None:
        ids, kinds, ats, errors, histories = [], [], [], [], []
        for task_id, kind, at in rows:
            err, hist = error_for(task_id) if kind == "failed" else (None, None)
            ids.append(task_id)
            kinds.append(kind)
            ats.append(at)
            errors.append(err)
            histories.append(hist)
        with conn.transaction():
            conn.execute(
                """UPDATE castor_tasks t SET status = u.kind, started_at = u.at + 0.01, finished_at = u.at + 0.05,
                          attempts = 1, error = u.err::jsonb, history = u.hist::jsonb,
                          result = CASE WHEN u.kind = 'success' THEN 'null'::bytea END,
                          result_text = u.kind = 'success', owner = NULL
                     FROM unnest(%s::text[], %s::text[], %s::float8[], %s::text[], %s::text[])
                          AS u(id, kind, at, err, hist)
                    WHERE t.id = u.id""", (ids, kinds, ats, errors, histories))

    return settle


def pages(manager: castor.Manager) -> list[tuple[str, str]]:
    """(label, path) of every screen, with keys and ids read from the store."""
    from castor.store import Query

    store = manager.store
    total = store.count(Query())
    deep = store.list(Query(), limit=1, offset=total // 2)[0]  # once, to find a middle key
    failed = store.list(Query(status=castor.TaskStatus.FAILED), limit=1)[0]
    key = f"{deep.enqueued_at!r}:{deep.id}"
    hour_ago = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 3600))
    return [
        ("overview", "/"),
        ("queues", "/queues"),
        ("tasks, first page", "/tasks"),
        ("tasks, deep page (after=, mid-table)", f"/tasks?after={key}"),
        ("tasks ?status=failed", "/tasks?status=failed"),
        ("tasks ?status=pending", "/tasks?status=pending"),
        ("tasks ?name=reports.export", "/tasks?name=reports.export"),
        ("tasks ?queue=mail", "/tasks?queue=mail"),
        ("tasks ?status=failed&name=..", "/tasks?status=failed&name=orders.charge"),
        ("tasks, newer page (before=, mid-table)", f"/tasks?before={key}"),
        ("tasks ?finished_from=(1 h ago)", f"/tasks?finished_from={hour_ago}"),
        ("tasks ?enqueued_to=(1 h ago)&status=failed", f"/tasks?enqueued_to={hour_ago}&status=failed"),
        ("tasks ?args=customer-4242 (search)", "/tasks?args=customer-4242"),
        ("tasks ?args=(no match: reads all)", "/tasks?args=nobody-has-this"),
        ("tasks ?id=", f"/tasks?id={failed.id}"),
        ("task detail", f"/tasks/{failed.id}"),
        ("failed", "/failed"),
        ("periodic", "/periodic"),
    ]


def measure(manager: castor.Manager, runs: int, extra: list[tuple[str, str]] | None = None) -> list[
        tuple[str, float, float]]:
    from starlette.testclient import TestClient

    client = TestClient(dashboard(manager))
    out = []
    for label, path in pages(manager) + (extra or []):
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"{path}: HTTP {response.status_code}: {response.text[:300]}")
        out.append((label, statistics.median(times), max(times)))
        print(f"  {label:<40} median {out[-1][1]:8.1f} ms   worst {out[-1][2]:8.1f} ms", flush=True)
    return out


def run_sqlite(n: int, runs: int, keep: str | None) -> list[tuple[str, float, float]]:
    directory = keep or tempfile.mkdtemp(prefix="castor-webbench-")
    path = os.path.join(directory, "tasks.db")
    fresh = not os.path.exists(path)
    started = time.perf_counter()
    manager = castor.Manager(path)
    manager.store.count(castor.store.Query(task_id=""))  # opened (and migrated, for a kept older file)
    print(f"  opened in {time.perf_counter() - started:.1f} s", flush=True)
    try:
        if fresh:
            fill(manager, n, sqlite_settler(path))
        return measure(manager, runs)
    finally:
        manager.close()


def run_postgresql(n: int, runs: int) -> list[tuple[str, float, float]]:
    from tests.postgres import ThrowawayServer

    server = ThrowawayServer(fsync=True)
    server.start()
    try:
        url = server.url()
        manager = castor.Manager(url)
        try:
            fill(manager, n, postgresql_settler(url))
            import psycopg

            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE castor_tasks")  # what autovacuum does after a bulk load
            return measure(manager, runs)
        finally:
            manager.close()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--keep", help="SQLite: fill (or reuse) tasks.db in this directory")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for backend in args.backends.split(","):
        print(f"{backend}: {args.tasks:,} tasks, {args.runs} runs per page", flush=True)
        if backend == "sqlite":
            results[backend] = run_sqlite(args.tasks, args.runs, args.keep)
        elif backend == "postgresql":
            results[backend] = run_postgresql(args.tasks, args.runs)
        else:
            raise SystemExit(f"unknown backend {backend!r}: sqlite or postgresql")
    backends = list(results)
    print(f"\npage (median ms of {args.runs}) " + "".join(f"{b:>14}" for b in backends))
    for i, (label, _, _) in enumerate(next(iter(results.values()))):
        figures = "".join(f"{results[b][i][1]:14.1f}" for b in backends)
        slow = " over 200 ms" if any(results[b][i][1] > 200 for b in backends) else ""
        print(f"{label:<40}{figures}{slow}")


if __name__ == "__main__":
    main()
