"""How castor's PostgreSQL tables grow under a sustained run, and what autovacuum does.

    .venv/bin/python benchmarks/pg_bloat.py [--seconds 300] [--rate 200] [--result-ttl 30]
        [--backlog 300000] [--only defaults,table,table+naptime] [--url postgresql://...]

It measures sizes, not speed. Each configuration gets a fresh database on one private
throwaway server (tests/postgres.py `ThrowawayServer`: PostgreSQL's defaults, fsync off,
which changes no size), or on `--url`'s server (its role needs CREATEDB; the naptime
configuration is skipped there: it changes a server setting):

1. --backlog tasks scheduled a day ahead (`countdown=86400`): live rows that stay, as a
   queue with scheduled work or a long result TTL has, and what autovacuum's
   scale factor (20% of the live rows by default) is measured against;
2. `castord start` (2 process children, 2 threads; benchmarks/compare_pg.py's app) and a
   producer that enqueues --rate tasks a second (`enqueue_many` every 0.1 s, alternately
   process and thread tasks), each with `result_ttl=` --result-ttl: kept that long after
   it succeeds, then deleted by the workers' purge. Every
   task is an INSERT, a claim UPDATE, a settle UPDATE and a DELETE, so ~3 dead row
   versions per task (and, since claims and settles change indexed columns, no HOT
   update: new entries in each index too);
3. every 5 s, from pg_stat_user_tables and the size functions: heap and index sizes of
   castor_tasks, live and dead rows (the statistics' estimates, marked ~), autovacuum
   runs so far, and the finished rows kept (counted).

Configurations (`--only`):
* defaults: castor's tables as it creates them (the server's autovacuum defaults);
* table: `ALTER TABLE castor_tasks SET (autovacuum_vacuum_scale_factor = 0,
  autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_scale_factor = 0,
  autovacuum_vacuum_insert_threshold = 10000, autovacuum_analyze_scale_factor = 0,
  autovacuum_analyze_threshold = 10000)`: vacuum after 10,000 dead rows whatever the
  table's size;
* table+naptime: the same, with the server's `autovacuum_naptime = 10s` (default 1 min:
  how often the launcher looks at each database at all).

Prints one line per sample and a summary per configuration. castord is stopped by its pid
in a `finally` (compare_pg's CastorBench).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_pg import CastorBench  # noqa: E402

from tests.postgres import TestPostgres, ThrowawayServer  # noqa: E402

SAMPLE_SECONDS = 5.0
OPTIONS = ("--workers", "2", "--threads", "2", "--log-level", "warning")

TABLE_SETTINGS = {
    "autovacuum_vacuum_scale_factor": "0", "autovacuum_vacuum_threshold": "10000",
    "autovacuum_vacuum_insert_scale_factor": "0", "autovacuum_vacuum_insert_threshold": "10000",
    "autovacuum_analyze_scale_factor": "0", "autovacuum_analyze_threshold": "10000",
}
CONFIGS = {  # name: (castor_tasks storage parameters, server settings)
    "defaults": ({}, {}),
    "table": (TABLE_SETTINGS, {}),
    "table+naptime": (TABLE_SETTINGS, {"autovacuum_naptime": "10s"}),
}

SAMPLE_SQL = """
SELECT pg_relation_size('castor_tasks'), pg_indexes_size('castor_tasks'), n_live_tup, n_dead_tup,
       autovacuum_count, autoanalyze_count,
       (SELECT count(*) FROM castor_tasks WHERE status = 'success')
  FROM pg_stat_user_tables WHERE relname = 'castor_tasks'"""


class Load:
    """compare_pg's castord (its noop/tnoop app) on a database, and a paced producer."""

    def __init__(self, url: str, ttl: float) -> None:
        self.bench = CastorBench(url)
        self.app = self.bench.app
        self.ttl = ttl
        self.produced = 0
        self._stop = threading.Event()
        self._producer: threading.Thread | None = None

    def schedule_backlog(self, n: int) -> None:
        for start in range(0, n, 10_000):
            self.app.manager.enqueue_many(self.app.noop.s(i).set(countdown=86_400)
                                          for i in range(start, min(n, start + 10_000)))

    def start(self, rate: int) -> None:
        self.bench.spawn(*OPTIONS)
        self._producer = threading.Thread(target=self._produce, args=(rate,), daemon=True)
        self._producer.start()

    def _produce(self, rate: int) -> None:
        per_round, period = max(1, rate // 10), 0.1
        next_at = time.monotonic()
        while not self._stop.is_set():
            task = self.app.noop if (self.produced // per_round) % 2 else self.app.tnoop
            self.app.manager.enqueue_many(task.s(i).set(result_ttl=self.ttl)
                                          for i in range(self.produced, self.produced + per_round))
            self.produced += per_round
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        if self._producer is not None:
            self._producer.join(30)
        self.bench.close()


def mb(n: int) -> str:
    return f"{n / 2**20:7.1f}"


def one_config(pg: TestPostgres, name: str, args: argparse.Namespace) -> dict[str, float]:
    table, server = CONFIGS[name]
    with pg.database() as url:
        run = Load(url, args.result_ttl)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                for key, value in server.items():
                    conn.execute(f"ALTER SYSTEM SET {key} = '{value}'")
                conn.execute("SELECT pg_reload_conf()")
                if table:
                    conn.execute("ALTER TABLE castor_tasks SET ("
                                 + ", ".join(f"{k} = {v}" for k, v in table.items()) + ")")
                run.schedule_backlog(args.backlog)
                conn.execute("VACUUM ANALYZE castor_tasks")  # the backlog's dead-free start
                run.start(args.rate)
                started = time.monotonic()
                peak = {"heap": 0, "index": 0, "dead": 0}
                print(f"\n== {name}: backlog {args.backlog:,}, {args.rate}/s, result_ttl {args.result_ttl:g} s")
                print("   t(s)   heap MB  index MB     live~     dead~  autovac  analyze  kept(success)")
                heap = index = vacuums = 0
                elapsed = 0.0
                while time.monotonic() - started < args.seconds:
                    time.sleep(SAMPLE_SECONDS)
                    elapsed = time.monotonic() - started
                    heap, index, live, dead, vacuums, analyzes, kept = conn.execute(SAMPLE_SQL).fetchone()
                    peak = {"heap": max(peak["heap"], heap), "index": max(peak["index"], index),
                            "dead": max(peak["dead"], dead)}
                    print(f"  {elapsed:5.0f}  {mb(heap)}  {mb(index)}  {live:8,}  {dead:8,}  {vacuums:7}  "
                          f"{analyzes:7}  {kept:8,}")
                updates, hot = conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                            "WHERE relname = 'castor_tasks'").fetchone()
                done = run.produced - conn.execute(
                    "SELECT count(*) FROM castor_tasks WHERE status IN ('pending', 'running') AND eta < "
                    "extract(epoch FROM now()) + 3600").fetchone()[0]
        finally:
            run.close()
            if server:
                with psycopg.connect(url, autocommit=True) as conn:
                    for key in server:
                        conn.execute(f"ALTER SYSTEM RESET {key}")
                    conn.execute("SELECT pg_reload_conf()")
    return {"final heap MB": heap / 2**20, "final index MB": index / 2**20, "peak heap MB": peak["heap"] / 2**20,
            "peak index MB": peak["index"] / 2**20, "peak dead rows": peak["dead"], "autovacuums": vacuums,
            "HOT updates %": 100.0 * hot / max(1, updates), "tasks done": done, "tasks/s done": done / elapsed}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="of sustained load per configuration")
    parser.add_argument("--rate", type=int, default=200, help="tasks enqueued per second")
    parser.add_argument("--result-ttl", type=float, default=30.0)
    parser.add_argument("--backlog", type=int, default=300_000, help="tasks scheduled a day ahead, first")
    parser.add_argument("--only", default=",".join(CONFIGS), type=lambda s: [w for w in s.split(",") if w])
    parser.add_argument("--url", help="an existing server (its role needs CREATEDB); default: a throwaway one")
    args = parser.parse_args(argv)
    if unknown := set(args.only) - set(CONFIGS):
        parser.error(f"--only: unknown configuration(s) {', '.join(sorted(unknown))}; choose from {', '.join(CONFIGS)}")
    server = None
    if args.url:
        pg = TestPostgres(args.url, None)
        args.only = [c for c in args.only if not CONFIGS[c][1]]  # no server settings on someone else's server
    else:
        server = ThrowawayServer(fsync=False)
        server.start()
        pg = TestPostgres(server.url(), server)
    try:
        summary = {name: one_config(pg, name, args) for name in args.only}
    finally:
        if server is not None:
            server.stop()
    print("\n== summary")
    keys = list(next(iter(summary.values())))
    print(f"  {'':22}" + "".join(f"{name:>16}" for name in summary))
    for key in keys:
        print(f"  {key:22}" + "".join(f"{summary[name][key]:16,.1f}" for name in summary))


if __name__ == "__main__":
    main()
