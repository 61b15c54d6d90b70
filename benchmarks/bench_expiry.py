"""What expiry and pausing a task name cost the store (issue 16), on both stores.

    .venv/bin/python benchmarks/bench_expiry.py [--pending 10000,100000] [--runs 5] [--postgres URL]

For each backlog size, on a fresh store (a beaver file in a temp directory, and a fresh
schema on PostgreSQL: the server at --postgres, else a private throwaway one, as
compare_pg.py's: tests/postgres.py's ThrowawayServer(fsync=True)):

* sweep: the median time of `Store.expire_pending` finding nothing expired, over a
  backlog of pending tasks due tomorrow, a tenth of them with an expiry (the sweep each
  worker runs every 2 s: it has no index, so it reads the pending rows);
* claim: the median time of one `claim` + `settle_one` of a due task at the head of the
  queue, with no name paused and then with a name paused whose backlog (the same size,
  due now, ahead in claim order) the claim must step over.

Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from castor.states import TaskStatus  # noqa: E402
from castor.store import NewTask, open_store  # noqa: E402
from castor.store.base import Settlement  # noqa: E402


def task(i: int, *, now: float, eta: float, name: str = "t", priority: int = 0,
         options: dict[str, Any] | None = None) -> NewTask:
    return NewTask(id=f"{name}-{i}-{uuid.uuid4().hex[:8]}", name=name, mode="process", serializer="json",
                   args="[]", kwargs="{}", enqueued_at=now, eta=eta, priority=priority, options=options or {})


def fill(store: Any, n: int, make: Any) -> None:
    for start in range(0, n, 5000):
        store.enqueue([make(i) for i in range(start, min(n, start + 5000))])


def timed(fn: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def claim_and_settle(store: Any) -> None:
    now = time.time()
    (rec,) = store.claim("bench", mode="process", queues=None, limit=1, lease=30.0, now=now)
    store.settle_one(Settlement(rec.id, "bench", rec.attempts, TaskStatus.SUCCESS, result="1",
                                finished_at=now, fence=rec.fence))


def measure(label: str, location: str, pending: int, runs: int) -> None:
    store = open_store(location)
    try:
        now = time.time()
        tomorrow = now + 86400
        fill(store, pending, lambda i: task(i, now=now, eta=tomorrow,
                                            options={"expires": tomorrow + 60} if i % 10 == 0 else None))
        sweep = timed(lambda: store.expire_pending(now=time.time()), runs)
        fill(store, runs * 3, lambda i: task(i, now=now, eta=now, name="runs"))
        plain = timed(lambda: claim_and_settle(store), runs)
        # The paused name's backlog is due now, at a better priority: first in claim order.
        fill(store, pending, lambda i: task(i, now=now, eta=now, name="held", priority=1))
        store.pause_name("held")
        store.claim("bench", mode="process", queues=None, limit=0, lease=30.0, now=now)  # the plan, read once
        paused = timed(lambda: claim_and_settle(store), runs)
        print(f"{label:10} pending {pending:>7,}: sweep (nothing expired) {sweep * 1000:8.2f} ms | "
              f"claim+settle {plain * 1000:6.2f} ms; with a paused name's {pending:,} due tasks ahead "
              f"{paused * 1000:8.2f} ms")
    finally:
        store.close()


def pg_location(url: str) -> tuple[str, Any]:
    from urllib.parse import quote

    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")

    def drop() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

    return url + ("&" if "?" in url else "?") + "options=" + quote(f"-csearch_path={schema}"), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pending", default="10000,100000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--postgres", default=os.environ.get("CASTOR_BENCH_POSTGRES_URL"))
    args = parser.parse_args()
    server = None
    if not args.postgres:
        from tests.postgres import ThrowawayServer

        server = ThrowawayServer(fsync=True)
        server.start()
        args.postgres = server.url()
    try:
        run(args)
    finally:
        if server is not None:
            server.stop()


def run(args: argparse.Namespace) -> None:
    for pending in (int(p) for p in args.pending.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            measure("sqlite", str(Path(tmp) / "bench.db"), pending, args.runs)
        location, drop = pg_location(args.postgres)
        try:
            measure("postgresql", location, pending, args.runs)
        finally:
            drop()


if __name__ == "__main__":
    main()
