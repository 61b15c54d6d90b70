"""castor beside procrastinate on one PostgreSQL (issue 14), measured from outside.

    .venv/bin/pip install -e '.[dev,bench]'      # procrastinate, for this script only
    .venv/bin/python benchmarks/compare_pg.py [--runs 3] [--url postgresql://...]
        [--only enqueue,drain,latency] [--enqueue-n 2000] [--batch-n 50000] [--drain-n 10000] [--latency-n 300]

The server is a private throwaway one (tests/postgres.py's `ThrowawayServer(fsync=True)`:
PostgreSQL's defaults, fsync on), or `--url` (its role needs CREATEDB); each workload gets
a fresh database. The method is benchmarks/compare.py's, for Huey: spawn the peer's worker
processes and watch finished jobs from outside on a read-only connection every 20 ms
(follow(): two jobs looked up by id each poll, the full count only when it can be the end).

castor's side (marked CASTOR SIDE below) runs `castord start` on castor's PostgreSQL store
the same way: tasks queued with `.map` before spawn, counted from `castor_tasks`.

procrastinate, stock
--------------------
`procrastinate.App(connector=PsycopgConnector(conninfo=URL))` in a generated
`pgapp.py`, one task `noop(i)` returning `i` (a sync function), and its own CLI worker:
`procrastinate --app=pgapp.app worker`. Every setting is its default (LISTEN/NOTIFY on,
jobs kept after they finish) except the concurrency a workload names.
procrastinate has no process pool: a worker is one asyncio process that runs up to
`--concurrency` jobs at once, a sync task in a thread of its own. So:
* "2 process workers": two worker processes, `--concurrency 1` each (two jobs at a
  time, in two processes: the nearest to castord's 2 process children);
* "8 threads": one worker process, `--concurrency 8` (eight sync jobs at a time, each in a
  thread: the nearest to castord's thread host with 8 threads).

Workloads (`--only` names)
--------------------------
* drain: --drain-n jobs queued (`noop.batch_defer`, one statement) before the workers
  start, then spawn -> last job counted `succeeded`
  (`SELECT status, count(*) FROM procrastinate_jobs GROUP BY status`, run once the last
  job queued has ended; a `failed` job stops the benchmark); tasks/s over spawn -> last,
  spawn -> the first job queued ended, and the rate after it.
  A `succeeded` job is done: procrastinate stores no return value, so there is no result
  write to wait for, a little less work than castor's (which stores each result).
* latency: enqueue -> result on an idle worker (the 2-process setup, warmed up with 20 jobs),
  one job at a time with 2 ms between: from just before `noop.defer()` to the first poll
  that reads the job `succeeded`. procrastinate has no result API to wait on, so this
  polls the job's row by its id every 1 ms (resolution ~1 ms); p50/p90/p99 ms.

* enqueue: from one client process, no worker running: --enqueue-n one at a time
  (procrastinate `noop.defer(i=i)`, castor `noop.delay(i)`; each durable on return) and
  --batch-n in one call (procrastinate `noop.batch_defer(...)`, castor `noop.map(...)`);
  tasks/s.

Every process started here is stopped by its pid (compare.py's `stop_by_pid`: TERM, then
KILL) in a `finally`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# The tree castord's processes import castor and castord from (benchmarks/ab_pg.py sets
# another by turns); the producer here always uses this checkout's.
CASTORD_TREE = REPO
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import POLL, stop_by_pid  # noqa: E402
from installed import compile_castor  # noqa: E402

from tests.postgres import TestPostgres, ThrowawayServer  # noqa: E402

PROCRASTINATE = str(Path(sys.executable).parent / "procrastinate")

PG_APP = '''
import os
import procrastinate

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ["PG_BENCH_URL"]))


@app.task(name="noop")
def noop(i):
    return i
'''

SETUPS = {  # name: (worker processes, --concurrency each)
    "2 process workers": (2, 1),
    "8 threads": (1, 8),
}


class ProcrastinateBench:
    """A temp dir with `pgapp.py` on a fresh database with procrastinate's schema applied."""

    def __init__(self, url: str) -> None:
        if not Path(PROCRASTINATE).exists():
            raise SystemExit(f"{PROCRASTINATE} not found: pip install -e '.[bench]' into this venv")
        self.url = url
        self.dir = Path(tempfile.mkdtemp(prefix="castor-compare-pg-"))
        (self.dir / "pgapp.py").write_text(PG_APP)
        self.env = {**os.environ, "PG_BENCH_URL": url,
                    "PYTHONPATH": os.pathsep.join(p for p in (str(self.dir), os.environ.get("PYTHONPATH")) if p)}
        self.cli("schema", "--apply")
        self.workers: list[tuple[subprocess.Popen[bytes], Any]] = []

    def cli(self, *args: str) -> None:
        done = subprocess.run([PROCRASTINATE, "--app=pgapp.app", *args], cwd=self.dir, env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"procrastinate {' '.join(args)} failed ({done.returncode}):\n{done.stdout}")

    def defer_many(self, n: int) -> None:
        """Queue n jobs in one call, in a child (the app module is the generated one)."""
        code = ("import pgapp\nwith pgapp.app.open():\n"
                f"    pgapp.noop.batch_defer(*({{'i': i}} for i in range({n})))\n")
        subprocess.run([sys.executable, "-c", code], cwd=self.dir, env=self.env, check=True, timeout=300)

    def spawn(self, processes: int, concurrency: int) -> float:
        """Start the workers; returns the perf_counter time just before the first spawn."""
        started = time.perf_counter()
        for k in range(processes):
            log = open(self.dir / f"worker{k}.log", "ab")  # noqa: SIM115 - closed in close()
            proc = subprocess.Popen(
                [PROCRASTINATE, "--app=pgapp.app", "worker", "--concurrency", str(concurrency)],
                cwd=self.dir, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.workers.append((proc, log))
        return started

    def close(self) -> None:
        for proc, log in self.workers:
            stop_by_pid(proc)
            log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def read_only(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET default_transaction_read_only = on")
    return conn


def succeeded(conn: psycopg.Connection[Any]) -> int:
    counts = dict(conn.execute("SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY status").fetchall())
    if counts.get("failed"):
        raise RuntimeError(f"procrastinate jobs failed: {counts}")
    return int(counts.get("succeeded", 0))


def ended(conn: psycopg.Connection[Any], query: str, job: Any, done: str, what: str) -> bool:
    """Whether one job's status (`query`: an index lookup by its id) is `done`; a failed
    job raises."""
    row = conn.execute(query, (job,)).fetchone()
    status = row[0] if row is not None else None
    if status == "failed":
        raise RuntimeError(f"{what} {job} failed")
    return status == done


def job_done(conn: psycopg.Connection[Any], job: Any) -> bool:
    return ended(conn, "SELECT status::text FROM procrastinate_jobs WHERE id = %s", job, "succeeded", "procrastinate job")


# The full count scans the table: ~6 ms of server CPU at 10,000 rows (12 ms at 20,000,
# pg_stat_statements), so polled every 20 ms it took ~30-60 % of one core of the two from
# whichever peer it watched. So follow() polls two rows by id and counts rarely.
COUNT_EVERY = 1.0  # seconds between full counts before the last job is done (failures show)


def follow(conn: psycopg.Connection[Any], n: int, started: float, ends: tuple[Any, Any], timeout: float = 300,
           count: Any = None, done: Any = None) -> tuple[float, int, float]:
    """Poll every POLL s until n jobs succeeded: (spawn -> first, count then, spawn -> last).

    `ends` are the ids of the first and the last job queued; both peers claim in queue
    order (priority, then id), so the first queued is the first to end, within a
    batch, and the last queued among the last. Each poll reads one of them by id
    (`done`): the first until it ended, then the last; the full count (`count`) runs
    once at the first result, every COUNT_EVERY s, and every poll once the last job
    ended, until it reads n (the figure is the full count's, never the guess's)."""
    count = count or succeeded
    done = done or job_done
    first: float | None = None
    first_count = 0
    last_count = time.perf_counter()
    next_poll = last_count
    while True:
        now = time.perf_counter()
        if first is None:
            if done(conn, ends[0]):
                first, first_count = now - started, count(conn)
                last_count = now
        elif done(conn, ends[1]) or now - last_count >= COUNT_EVERY:
            last_count = now
            if count(conn) >= n:
                return first, first_count, now - started
        if now - started > timeout:
            raise TimeoutError(f"{count(conn)} of {n} jobs succeeded after {timeout} s")
        next_poll = max(next_poll + POLL, time.perf_counter())
        time.sleep(max(0.0, next_poll - time.perf_counter()))


def drain_figures(n: int, setup: str, first: float, first_count: int, last: float) -> dict[str, float]:
    """A drain's figures, the same keys for both peers (follow()'s times)."""
    after = (n - first_count) / (last - first) if last > first else float("nan")
    return {f"drain {n}, {setup}: tasks/s": n / last, f"drain {n}, {setup}: first result s": first,
            f"drain {n}, {setup}: tasks/s after the first": after}


def latency_figures(times: list[float]) -> dict[str, float]:
    """p50/p90/p99 of enqueue -> result times (ms), the same keys for both peers."""
    ordered = sorted(times)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"enqueue->result p50 ms": pick(0.5), "enqueue->result p90 ms": pick(0.9),
            "enqueue->result p99 ms": pick(0.99)}


def procrastinate_drain(pg: TestPostgres, n: int, setup: str) -> dict[str, float]:
    processes, concurrency = SETUPS[setup]
    with pg.database() as url:
        bench = ProcrastinateBench(url)
        try:
            bench.defer_many(n)
            with read_only(url) as conn:
                ends = conn.execute("SELECT min(id), max(id) FROM procrastinate_jobs").fetchone()
                assert ends is not None
                started = bench.spawn(processes, concurrency)
                first, first_count, last = follow(conn, n, started, ends)
        finally:
            bench.close()
    return drain_figures(n, setup, first, first_count, last)


def procrastinate_latency(pg: TestPostgres, n: int) -> dict[str, float]:
    with pg.database() as url:
        bench = ProcrastinateBench(url)
        try:
            sys.path.insert(0, str(bench.dir))
            os.environ["PG_BENCH_URL"] = url
            sys.modules.pop("pgapp", None)
            import pgapp  # noqa: PLC0415 - generated per run

            bench.spawn(*SETUPS["2 process workers"])
            times = []
            with pgapp.app.open(), read_only(url) as conn:
                for i in range(20 + n):
                    start = time.perf_counter()
                    job = pgapp.noop.defer(i=i)
                    while True:
                        row = conn.execute("SELECT status::text FROM procrastinate_jobs WHERE id = %s", (job,)).fetchone()
                        if row and row[0] == "succeeded":
                            break
                        if row and row[0] == "failed":
                            raise RuntimeError(f"job {job} failed")
                        if time.perf_counter() - start > 60:
                            raise TimeoutError(f"job {job} not done after 60 s (status {row})")
                        time.sleep(0.001)
                    if i >= 20:  # the first 20 warm the workers up
                        times.append((time.perf_counter() - start) * 1000)
                    time.sleep(0.002)
        finally:
            sys.path.remove(str(bench.dir))
            bench.close()
    return latency_figures(times)


def procrastinate_enqueue(pg: TestPostgres, n: int, batch: int) -> dict[str, float]:
    with pg.database() as url:
        bench = ProcrastinateBench(url)
        try:
            sys.path.insert(0, str(bench.dir))
            os.environ["PG_BENCH_URL"] = url
            sys.modules.pop("pgapp", None)
            import pgapp  # noqa: PLC0415 - generated per run

            with pgapp.app.open():
                pgapp.noop.defer(i=-1)  # the connection and the statement warmed up
                start = time.perf_counter()
                for i in range(n):
                    pgapp.noop.defer(i=i)
                one = n / (time.perf_counter() - start)
                start = time.perf_counter()
                pgapp.noop.batch_defer(*({"i": i} for i in range(batch)))
                many = batch / (time.perf_counter() - start)
        finally:
            sys.path.remove(str(bench.dir))
            bench.close()
    return {"enqueue one at a time: tasks/s": one, f"enqueue {batch} in one call: tasks/s": many}


# === CASTOR SIDE ===========================================================================
# The same workloads on a fresh database of the same server: drain with `castord start`
# (--workers 2 --threads 0 for process tasks, --workers 0 --threads 8 for thread tasks) on
# tasks queued before spawn (`.map`, one transaction), watched from outside as
# procrastinate's are (follow(); the count is `SELECT status, count(*) FROM castor_tasks
# GROUP BY status`); latency: `delay().join()` on an idle castord, 2 process children.
CASTORD = str(Path(sys.executable).parent / "castord")
CASTOR_APP = '''
import os
import castor

manager = castor.Manager(os.environ["PG_BENCH_URL"])


@manager.task(mode="process", name="noop")
def noop(i):
    return i


@manager.task(mode="thread", name="tnoop")
def tnoop(i):
    return i
'''
CASTOR_SETUPS = {  # name: (castord options, task)
    "2 process workers": (("--workers", "2", "--threads", "0"), "noop"),
    "8 threads": (("--workers", "0", "--threads", "8"), "tnoop"),
}


class CastorBench:
    """A temp dir with `castorapp.py` on a fresh database; castord started from it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dir = Path(tempfile.mkdtemp(prefix="castor-compare-pg-castor-"))
        (self.dir / "castorapp.py").write_text(CASTOR_APP)
        self.env = {**os.environ, "PG_BENCH_URL": url,
                    "PYTHONPATH": os.pathsep.join(p for p in (str(self.dir), str(CASTORD_TREE), os.environ.get("PYTHONPATH"))
                                                  if p)}
        self.env.pop("NOTIFY_SOCKET", None)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.log: Any = None
        sys.path.insert(0, str(self.dir))
        os.environ["PG_BENCH_URL"] = url
        sys.modules.pop("castorapp", None)
        import castorapp  # noqa: PLC0415 - generated per run

        self.app = castorapp

    def spawn(self, *options: str) -> float:
        self.log = open(self.dir / "castord.log", "ab")  # noqa: SIM115 - closed in close()
        started = time.perf_counter()
        self.daemon = subprocess.Popen([CASTORD, "start", "castorapp:manager", *options], cwd=self.dir,
                                       env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        return started

    def close(self) -> None:
        if self.daemon is not None:
            stop_by_pid(self.daemon)
        if self.log is not None:
            self.log.close()
        self.app.manager.close()
        sys.path.remove(str(self.dir))
        sys.modules.pop("castorapp", None)
        shutil.rmtree(self.dir, ignore_errors=True)


def castor_succeeded(conn: psycopg.Connection[Any]) -> int:
    counts = dict(conn.execute("SELECT status, count(*) FROM castor_tasks GROUP BY status").fetchall())
    if counts.get("failed"):
        raise RuntimeError(f"castor tasks failed: {counts}")
    return int(counts.get("success", 0))


def castor_done(conn: psycopg.Connection[Any], task_id: str) -> bool:
    return ended(conn, "SELECT status FROM castor_tasks WHERE id = %s", task_id, "success", "castor task")


def castor_drain(pg: TestPostgres, n: int, setup: str) -> dict[str, float]:
    options, task = CASTOR_SETUPS[setup]
    with pg.database() as url:
        bench = CastorBench(url)
        try:
            queued = getattr(bench.app, task).map((i,) for i in range(n))
            with read_only(url) as conn:
                started = bench.spawn(*options)
                first, first_count, last = follow(conn, n, started, (queued[0].id, queued[-1].id),
                                                  count=castor_succeeded, done=castor_done)
        finally:
            bench.close()
    return drain_figures(n, setup, first, first_count, last)


def castor_latency(pg: TestPostgres, n: int) -> dict[str, float]:
    with pg.database() as url:
        bench = CastorBench(url)
        try:
            bench.spawn(*CASTOR_SETUPS["2 process workers"][0])
            times = []
            for i in range(20 + n):
                start = time.perf_counter()
                assert bench.app.noop.delay(i).join(timeout=60) == i
                if i >= 20:  # the first 20 warm the children up
                    times.append((time.perf_counter() - start) * 1000)
                time.sleep(0.002)
        finally:
            bench.close()
    return latency_figures(times)


def castor_enqueue(pg: TestPostgres, n: int, batch: int) -> dict[str, float]:
    with pg.database() as url:
        bench = CastorBench(url)
        try:
            bench.app.noop.delay(-1)  # the connection and castor's tables ready
            start = time.perf_counter()
            for i in range(n):
                bench.app.noop.delay(i)
            one = n / (time.perf_counter() - start)
            start = time.perf_counter()
            bench.app.noop.map((i,) for i in range(batch))
            many = batch / (time.perf_counter() - start)
        finally:
            bench.close()
    return {"enqueue one at a time: tasks/s": one, f"enqueue {batch} in one call: tasks/s": many}


def castor_side(pg: TestPostgres, workload: str, args: argparse.Namespace) -> dict[str, float]:
    if workload == "enqueue":
        return castor_enqueue(pg, args.enqueue_n, args.batch_n)
    if workload == "drain":
        out: dict[str, float] = {}
        for setup in CASTOR_SETUPS:
            out.update(castor_drain(pg, args.drain_n, setup))
        return out
    return castor_latency(pg, args.latency_n)
# ===========================================================================================


def one_run(pg: TestPostgres, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {"procrastinate": {}, "castor": {}}
    for workload in args.only:
        if workload == "drain":
            for setup in SETUPS:
                figures["procrastinate"].update(procrastinate_drain(pg, args.drain_n, setup))
        elif workload == "enqueue":
            figures["procrastinate"].update(procrastinate_enqueue(pg, args.enqueue_n, args.batch_n))
        else:
            figures["procrastinate"].update(procrastinate_latency(pg, args.latency_n))
        figures["castor"].update(castor_side(pg, workload, args))
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", help="an existing server (its role needs CREATEDB); default: a throwaway one")
    parser.add_argument("--only", default="enqueue,drain,latency", type=lambda s: [w for w in s.split(",") if w])
    parser.add_argument("--enqueue-n", type=int, default=2_000)
    parser.add_argument("--batch-n", type=int, default=50_000)
    parser.add_argument("--drain-n", type=int, default=10_000)
    parser.add_argument("--latency-n", type=int, default=300)
    args = parser.parse_args(argv)
    if unknown := set(args.only) - {"enqueue", "drain", "latency"}:
        parser.error(f"--only: unknown workload(s) {', '.join(sorted(unknown))}; choose from enqueue, drain, latency")
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    compile_castor()  # as an installed castor (benchmarks/installed.py)
    server = None
    if args.url is None:
        server = ThrowawayServer(fsync=True)
        server.start()
    pg = TestPostgres(args.url or server.url(), server)  # type: ignore[union-attr]
    import procrastinate  # noqa: PLC0415 - the bench extra, checked by ProcrastinateBench too

    runs = []
    try:
        with pg.connect() as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        print(f"PostgreSQL {version}, procrastinate {procrastinate.__version__}, psycopg {psycopg.__version__}")
        for run in range(args.runs):
            try:
                runs.append(one_run(pg, args))
            except Exception:
                traceback.print_exc()
                raise
            for peer in ("procrastinate", "castor"):
                print(f"run {run + 1}, {peer}: " + "; ".join(f"{k} {v:,.2f}" for k, v in runs[-1][peer].items()),
                      flush=True)
    finally:
        if server is not None:
            server.stop()
    keys = list(runs[0]["procrastinate"])
    width = max(len(k) for k in keys)
    print(f"\n{'figure':<{width}}  {'procrastinate':>14}  {'castor':>14}  castor/procrastinate  (median of {args.runs})")
    for key in keys:
        theirs = statistics.median(r["procrastinate"][key] for r in runs)
        ours = [r["castor"][key] for r in runs if key in r["castor"]]
        if ours:
            mine = statistics.median(ours)
            print(f"{key:<{width}}  {theirs:>14,.2f}  {mine:>14,.2f}  {mine / theirs:>8.2f}")
        else:
            print(f"{key:<{width}}  {theirs:>14,.2f}  {'not measured':>14}")


if __name__ == "__main__":
    main()
