"""castor beside Huey (issue 12): the same workloads, in one run, measured from outside.

    .venv/bin/pip install -e '.[dev,bench]'      # huey, for this script only
    .venv/bin/python benchmarks/compare.py [--runs 3] [--only delay,batch,drain,startup,latency,cpu,idle]
        [--json PATH] [--delay-n 10000] [--batch-n 100000] [--drain-n 10000] [--latency-n 300]
        [--burn-n 200] [--burn-ms 20] [--idle-seconds 10] [--huey-quiet] [--castor-durable]
        [--castor-log-level info|warning|debug]

Each figure is printed for both peers with every run's value, the median, and the
ratio castor/Huey; a noisy shared machine moves both peers alike, so the ratio is the
figure to read. Within a run the two peers go back to back (castor first in even runs,
Huey first in odd ones), each on a fresh temp dir and database. A raw sqlite3 control
figure (single-row INSERT + COMMIT/s, bench_core's) is taken before and after.

The peers
---------
* castor: bench_core's `Bench` (its generated `benchapp:manager` with `noop`, `tnoop`
  (mode="thread") and `burn`) plus `span`, below; the daemon is `castord start
  benchapp:manager` through bench_castord's `Daemon` (NOTIFY_SOCKET bound here).
* Huey: `SqliteHuey(filename=...)`, stock, in a generated `hueyapp.py` with the same
  task bodies; the daemon is `.venv/bin/huey_consumer hueyapp.huey -w N -k process|thread`.
  The only settings given are the ones a workload names: worker count and worker type.
  Everything else is Huey's default, because it is what a user gets: the workers' queue
  polling (0.1 s, backing off ×1.15 up to 10 s when idle), `Result.get(blocking=True)`'s
  polling (0.05 s, ×1.15, up to 1 s), results stored, periodic scheduler on, and the
  consumer's INFO logging (two lines per task; sent to a file here, as castord's JSON log
  is). `--huey-quiet` passes `-q` (WARNING) to show what that logging costs; off by default.

Durability differs, stock against stock
---------------------------------------
Huey's SqliteStorage leaves SQLite's default `synchronous=FULL` in WAL mode: every commit
that writes waits for an fsync (each enqueue; per task, the dequeue and the result). castor's
default is `synchronous=NORMAL` (a commit survives a crash of the process, not of the
machine; `Manager(durable=True)` is FULL). That is what each gives a user, so it stays; but
it makes Huey's per-commit figures track this disk's fsync rate, which other tenants move a
lot (Huey's `.delay()` ran at ~7,000/s and ~500/s on the same machine an hour apart). So
the control is taken both ways: `synchronous=NORMAL` (bench_core's figure) and `FULL` (the
ceiling of Huey's `.delay()`), and `--castor-durable` runs castor with `durable=True` to
compare at equal durability.

Completion, seen from outside
-----------------------------
Every workload that waits for a daemon counts finished tasks on its own read-only
connection (`mode=ro`), polled every 20 ms (so times are ±20 ms); the time of a poll
is taken just before its query, the moment of the snapshot it reads.
* castor: `SELECT status, count(*) FROM castor_tasks GROUP BY status`; done = the
  `success` count (a `failed` row stops the benchmark). castor writes the status and
  the result in one transaction, so a counted task's result is readable.
* Huey: `SELECT count(*) FROM kv WHERE queue = 'huey'`. Huey pops a task from its `task`
  table before running it, so an empty queue table is not completion; a task that returns
  a value other than None has its result written to `kv` (key = task id) after it ran,
  and nothing else lands in `kv` here (no locks, no revokes: the revoke flag Huey deletes
  after each task was never set). So every Huey task returns its argument, like castor's,
  and a `kv` row is a finished task whose result a client can read: the same criterion.
Both peers' tasks therefore do the same work: run, return a small value, store it.
Watching costs something, as it does for a user: castor's GROUP BY scans the table (about
1.3 ms a poll with 10,000 rows on this machine kind, ~6 % of a core at one poll per 20 ms),
Huey's count about 0.3 ms.

Workloads (`--only` names)
--------------------------
* delay: 10,000 `.delay()` / Huey `noop(i)` calls in this process, tasks/s.
* batch: castor `.map` of 100,000 in one transaction (bench_core's); Huey has no batch
  API, so castor alone, against the ≥100,000/s target.
* drain: 10,000 queued no-op tasks, from the spawn of the daemon to the last result:
  2 process workers (`castord --workers 2 --threads 0` vs `huey_consumer -w 2 -k process`)
  and 8 threads (`castord --workers 0 --threads 8`, one thread host, `tnoop` tasks, vs
  `huey_consumer -w 8 -k thread`). Printed: tasks/s spawn → last result, spawn → first
  result, and the drain rate after it ((tasks not yet counted at the first result) ÷
  (last − first)).
* startup: one task queued before spawn, 2 process workers: spawn → READY=1 (castord's
  sd_notify datagram; Huey sends none) and spawn → first result, both.
* latency: enqueue → result through an idle daemon, one at a time with 2 ms between
  (bench_core's rhythm), p50/p90/p99: castor `delay().join()` for a mode="process" and a
  mode="thread" task (`castord --workers 2 --threads 8`), Huey `noop(i).get(blocking=True)`
  (`-w 2 -k process`; Huey has one kind of worker per consumer, so its one figure stands
  beside both castor modes).
* cpu: 200 tasks each burning 20 ms of its own CPU time (`time.process_time()`, as
  bench_core's `burn`), 2 process workers; each task returns its wall-clock start and end,
  and efficiency = (200 × 20 ms) ÷ (2 × (last end − first start)). CPU the machine's other
  tenants take lowers it for both peers alike.
* idle: CPU (utime + stime from /proc, every process of the daemon's tree) over 10 s, after
  one task ran and 1 s of rest: castord `--workers 2 --threads 8` (its master, fork server,
  two process children and a thread host) vs `huey_consumer -w 2 -k process`.

Every process started here is stopped by its pid (TERM, then KILL after a deadline) in a
`finally`. `--json PATH` writes every run's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_core  # noqa: E402
from bench_castord import Daemon  # noqa: E402
from bench_core import Bench, enqueue_batch, enqueue_delay, raw_sqlite  # noqa: E402
from installed import compile_castor  # noqa: E402
from procfs import cpu_seconds  # noqa: E402

HUEY_CONSUMER = str(Path(sys.executable).parent / "huey_consumer")
POLL = 0.020  # seconds between completion polls

# The CPU-heavy task body, the same text in both apps.
SPAN_BODY = '''
def span(ms):
    # `ms` of this process's CPU time; returns its wall-clock start and end.
    import time
    start = time.time()
    end = time.process_time() + ms / 1000
    while time.process_time() < end:
        pass
    return [start, time.time()]
'''

# bench_core's Bench writes bench_core.APP into its temp dir: add `span` to it, and let
# --castor-durable (CASTOR_BENCH_DURABLE=1, inherited by castord) open it with durable=True.
_MANAGER = 'castor.Manager(os.environ["CASTOR_BENCH_DB"])'
assert _MANAGER in bench_core.APP, "bench_core's app changed: update compare.py"
bench_core.APP = bench_core.APP.replace(
    _MANAGER, 'castor.Manager(os.environ["CASTOR_BENCH_DB"], durable=os.environ.get("CASTOR_BENCH_DURABLE") == "1")')
bench_core.APP += '\n@manager.task(mode="process", name="span")' + SPAN_BODY

HUEY_APP = '''
from huey import SqliteHuey

huey = SqliteHuey(filename=__DB__)


@huey.task()
def noop(i):
    return i


@huey.task()''' + SPAN_BODY


def raw_sqlite_full(n: int = 2_000) -> float:
    """Control: bench_core's raw_sqlite with synchronous=FULL (an fsync per commit, Huey's setting)."""
    return raw_sqlite(n, synchronous="FULL")


# -- processes ----------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (children of any of their threads)."""
    out, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        out.append(current)
        try:
            threads = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                frontier.extend(int(k) for k in Path(f"/proc/{current}/task/{tid}/children").read_text().split())
            except OSError:
                pass
    return out


def tree_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot: with the pid, its identity."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def stop_by_pid(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """TERM the process we started, then KILL it and any descendant it left behind."""
    descendants = [(pid, start_time(pid)) for pid in process_tree(proc.pid)[1:]]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
    for pid, started in descendants:
        if started is not None and start_time(pid) == started:  # the same process, outliving its parent
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class HueyBench:
    """Huey's counterpart of bench_core.Bench: a temp dir, a SqliteHuey file, its app module."""

    def __init__(self, quiet: bool = False) -> None:
        if not Path(HUEY_CONSUMER).exists():
            raise SystemExit(f"{HUEY_CONSUMER} not found: pip install -e '.[bench]' into this venv")
        self.dir = Path(tempfile.mkdtemp(prefix="castor-compare-huey-"))
        self.db = str(self.dir / "huey.db")
        (self.dir / "hueyapp.py").write_text(HUEY_APP.replace("__DB__", repr(self.db)))
        self.quiet = quiet
        sys.path.insert(0, str(self.dir))
        sys.modules.pop("hueyapp", None)
        import hueyapp  # noqa: PLC0415 - generated per run

        self.app: Any = hueyapp
        self.consumers: list[HueyConsumer] = []

    def consumer(self, *args: str) -> HueyConsumer:
        consumer = HueyConsumer(self, *args, *(("-q",) if self.quiet else ()))
        self.consumers.append(consumer)
        return consumer

    def close(self) -> None:
        for consumer in self.consumers:
            consumer.stop()
        self.app.huey.storage.close()
        sys.path.remove(str(self.dir))
        shutil.rmtree(self.dir, ignore_errors=True)


class HueyConsumer:
    def __init__(self, bench: HueyBench, *args: str) -> None:
        path = os.pathsep.join(p for p in (str(bench.dir), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        env.pop("NOTIFY_SOCKET", None)
        self.log = open(bench.dir / "huey_consumer.log", "ab")  # noqa: SIM115 - closed in stop()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([HUEY_CONSUMER, "hueyapp.huey", *args], cwd=bench.dir, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        stop_by_pid(self.proc)
        self.log.close()


def stop_castord(daemon: Daemon) -> None:
    try:
        stop_by_pid(daemon.proc, timeout=60)
    finally:
        daemon.sock.close()


# -- completion, from outside ---------------------------------------------------------------


class Counter:
    """Finished tasks, counted on a separate read-only connection."""

    def __init__(self, db: str, sql: str, reduce: Callable[[list[tuple[Any, ...]]], int]) -> None:
        self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
        self.sql = sql
        self.reduce = reduce

    def count(self) -> int:
        return self.reduce(self.conn.execute(self.sql).fetchall())

    def close(self) -> None:
        self.conn.close()


def castor_done(rows: list[tuple[Any, ...]]) -> int:
    counts = dict(rows)
    if counts.get("failed"):
        raise RuntimeError(f"castor tasks failed: {counts}")
    return int(counts.get("success", 0))


def castor_counter(b: Bench) -> Counter:
    return Counter(b.db, "SELECT status, count(*) FROM castor_tasks GROUP BY status", castor_done)


def huey_counter(h: HueyBench) -> Counter:
    return Counter(h.db, "SELECT count(*) FROM kv WHERE queue = 'huey'", lambda rows: int(rows[0][0]))


@dataclass
class Seen:
    ready: float | None  # spawn -> READY=1, s
    first: float  # spawn -> the first poll that counts a result, s
    first_count: int  # how many it counted
    last: float  # spawn -> the poll that counts all n


def follow(counter: Counter, n: int, started: float, notify: socket.socket | None = None,
           timeout: float = 300) -> Seen:
    """Poll every POLL s until n tasks are done (and READY=1 came, if notify is given)."""
    ready: float | None = None
    first: float | None = None
    first_count = 0
    next_poll = time.perf_counter()
    while True:
        now = time.perf_counter()
        done = counter.count()
        if done and first is None:
            first, first_count = now - started, done
        if done >= n and first is not None and (notify is None or ready is not None):
            return Seen(ready, first, first_count, now - started)
        if now - started > timeout:
            raise TimeoutError(f"{done} of {n} tasks done after {timeout} s")
        next_poll = max(next_poll + POLL, time.perf_counter())  # a late poll does not bunch the next ones
        while (wait := next_poll - time.perf_counter()) > 0:
            if notify is None or ready is not None:
                time.sleep(wait)
                break
            readable, _, _ = select.select([notify], [], [], wait)
            if readable and b"READY=1" in notify.recv(4096):
                ready = time.perf_counter() - started


def drain_figures(prefix: str, n: int, seen: Seen) -> dict[str, float]:
    after = (n - seen.first_count) / (seen.last - seen.first) if seen.last > seen.first else float("nan")
    return {f"{prefix}_total": n / seen.last, f"{prefix}_first": seen.first, f"{prefix}_after": after}


# -- workloads: each returns {figure key: value} for one peer, one run ------------------------


@dataclass(frozen=True)
class Config:
    delay_n: int
    batch_n: int
    drain_n: int
    latency_n: int
    burn_n: int
    burn_ms: int
    idle_seconds: float
    huey_quiet: bool
    castor_durable: bool


def castor_delay(cfg: Config) -> dict[str, float]:
    return {"delay": enqueue_delay(cfg.delay_n)}


def huey_delay(cfg: Config) -> dict[str, float]:
    h = HueyBench(cfg.huey_quiet)
    try:
        noop = h.app.noop
        start = time.perf_counter()
        for i in range(cfg.delay_n):
            noop(i)
        return {"delay": cfg.delay_n / (time.perf_counter() - start)}
    finally:
        h.close()


def castor_batch(cfg: Config) -> dict[str, float]:
    return {"batch": enqueue_batch(cfg.batch_n)}


def castor_drain(mode: str, cfg: Config) -> dict[str, float]:
    b = Bench()
    counter = None
    try:
        (b.app.noop if mode == "process" else b.app.tnoop).map([(i,) for i in range(cfg.drain_n)])
        counter = castor_counter(b)
        args = ("--workers", "2", "--threads", "0") if mode == "process" else ("--workers", "0", "--threads", "8")
        d = Daemon(b, *args)
        try:
            seen = follow(counter, cfg.drain_n, d.started)
        finally:
            stop_castord(d)
        return drain_figures(f"drain_{mode}", cfg.drain_n, seen)
    finally:
        if counter is not None:
            counter.close()
        b.close()


def huey_drain(mode: str, cfg: Config) -> dict[str, float]:
    h = HueyBench(cfg.huey_quiet)
    counter = None
    try:
        noop = h.app.noop
        for i in range(cfg.drain_n):
            noop(i)
        counter = huey_counter(h)
        c = h.consumer("-w", "2", "-k", "process") if mode == "process" else h.consumer("-w", "8", "-k", "thread")
        try:
            seen = follow(counter, cfg.drain_n, c.started)
        finally:
            c.stop()
        return drain_figures(f"drain_{mode}", cfg.drain_n, seen)
    finally:
        if counter is not None:
            counter.close()
        h.close()


def castor_startup(cfg: Config) -> dict[str, float]:
    b = Bench()
    counter = None
    try:
        b.app.noop.delay(0)
        counter = castor_counter(b)
        d = Daemon(b, "--workers", "2", "--threads", "0")
        try:
            seen = follow(counter, 1, d.started, notify=d.sock, timeout=60)
        finally:
            stop_castord(d)
        assert seen.ready is not None
        return {"ready": seen.ready, "first": seen.first}
    finally:
        if counter is not None:
            counter.close()
        b.close()


def huey_startup(cfg: Config) -> dict[str, float]:
    h = HueyBench(cfg.huey_quiet)
    counter = None
    try:
        h.app.noop(0)
        counter = huey_counter(h)
        c = h.consumer("-w", "2", "-k", "process")
        try:
            seen = follow(counter, 1, c.started, timeout=60)
        finally:
            c.stop()
        return {"first": seen.first}
    finally:
        if counter is not None:
            counter.close()
        h.close()


def percentiles(samples: list[float], prefix: str) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {f"{prefix}_p50": cuts[49] * 1000, f"{prefix}_p90": cuts[89] * 1000, f"{prefix}_p99": cuts[98] * 1000}


def round_trips(n: int, call: Callable[[int], object]) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - start)
        time.sleep(0.002)  # let the daemon go idle again (bench_core's rhythm)
    return samples


def castor_latency(cfg: Config) -> dict[str, float]:
    b = Bench()
    try:
        d = Daemon(b, "--workers", "2", "--threads", "8")
        try:
            d.wait_ready()
            out: dict[str, float] = {}
            for mode, task in (("process", b.app.noop), ("thread", b.app.tnoop)):
                task.delay(-1).join(timeout=30)  # the daemon is up and idle

                def call(i: int, task: Any = task) -> object:
                    return task.delay(i).join(timeout=30)

                out |= percentiles(round_trips(cfg.latency_n, call), f"lat_{mode}")
            return out
        finally:
            stop_castord(d)
    finally:
        b.close()


def huey_latency(cfg: Config) -> dict[str, float]:
    h = HueyBench(cfg.huey_quiet)
    try:
        c = h.consumer("-w", "2", "-k", "process")
        try:
            noop = h.app.noop
            noop(-1).get(blocking=True, timeout=30)
            return percentiles(round_trips(cfg.latency_n, lambda i: noop(i).get(blocking=True, timeout=30)), "lat")
        finally:
            c.stop()
    finally:
        h.close()


def efficiency(cfg: Config, spans: list[list[float]]) -> dict[str, float]:
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return {"cpu_eff": cfg.burn_n * cfg.burn_ms / 1000 / (2 * wall)}


def castor_cpu(cfg: Config) -> dict[str, float]:
    b = Bench()
    try:
        d = Daemon(b, "--workers", "2", "--threads", "0")
        try:
            d.wait_ready()
            for task in b.app.noop.map([(-1,), (-2,)]):
                task.join(timeout=30)
            tasks = b.app.span.map([(cfg.burn_ms,) for _ in range(cfg.burn_n)])
            return efficiency(cfg, [task.join(timeout=120) for task in tasks])
        finally:
            stop_castord(d)
    finally:
        b.close()


def huey_cpu(cfg: Config) -> dict[str, float]:
    h = HueyBench(cfg.huey_quiet)
    try:
        c = h.consumer("-w", "2", "-k", "process")
        try:
            for result in [h.app.noop(-1), h.app.noop(-2)]:
                result.get(blocking=True, timeout=30)
            results = [h.app.span(cfg.burn_ms) for _ in range(cfg.burn_n)]
            return efficiency(cfg, [r.get(blocking=True, timeout=120) for r in results])
        finally:
            c.stop()
    finally:
        h.close()


def idle_percent(root: int, seconds: float) -> float:
    time.sleep(1.0)
    pids = process_tree(root)
    before, start = tree_cpu(pids), time.monotonic()
    time.sleep(seconds)
    return 100 * (tree_cpu(pids) - before) / (time.monotonic() - start)


def castor_idle(cfg: Config) -> dict[str, float]:
    b = Bench()
    try:
        d = Daemon(b, "--workers", "2", "--threads", "8")
        try:
            d.wait_ready()
            b.app.noop.delay(0).join(timeout=30)
            return {"idle": idle_percent(d.proc.pid, cfg.idle_seconds)}
        finally:
            stop_castord(d)
    finally:
        b.close()


def huey_idle(cfg: Config) -> dict[str, float]:
    h = HueyBench(cfg.huey_quiet)
    try:
        c = h.consumer("-w", "2", "-k", "process")
        try:
            h.app.noop(0).get(blocking=True, timeout=30)
            return {"idle": idle_percent(c.proc.pid, cfg.idle_seconds)}
        finally:
            c.stop()
    finally:
        h.close()


Runner = Callable[[Config], dict[str, float]]


@dataclass(frozen=True)
class Workload:
    name: str  # its --only name
    title: str
    castor: Runner
    huey: Runner | None


WORKLOADS = [
    Workload("delay", ".delay() one at a time, one process", castor_delay, huey_delay),
    Workload("batch", "batch enqueue (castor .map; Huey has none)", castor_batch, None),
    Workload("drain", "drain, 2 process workers, from spawn",
             lambda cfg: castor_drain("process", cfg), lambda cfg: huey_drain("process", cfg)),
    Workload("drain", "drain, 8 threads, from spawn",
             lambda cfg: castor_drain("thread", cfg), lambda cfg: huey_drain("thread", cfg)),
    Workload("startup", "start-up, one task queued, 2 process workers", castor_startup, huey_startup),
    Workload("latency", "enqueue -> result, idle daemon", castor_latency, huey_latency),
    Workload("cpu", "CPU-heavy, 2 process workers", castor_cpu, huey_cpu),
    Workload("idle", "idle daemon CPU, whole process tree", castor_idle, huey_idle),
]


# -- figures and targets ---------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    label: str
    castor: str | None  # key of castor's value
    huey: str | None  # key of Huey's value
    unit: str
    fmt: str
    target: str = ""
    # castor median, Huey median -> target met? (None: no target)
    check: Callable[[float, float | None], bool] | None = None


def ratio_at_least(x: float) -> Callable[[float, float | None], bool]:
    return lambda c, h: h is not None and c / h >= x


def at_most(x: float) -> Callable[[float, float | None], bool]:
    return lambda c, h: c <= x


FIGURES = [
    Figure(".delay(), one process", "delay", "delay", "tasks/s", ",.0f", ">= 3x Huey", ratio_at_least(3)),
    Figure("enqueue_many / .map", "batch", None, "tasks/s", ",.0f", ">= 100,000/s",
           lambda c, h: c >= 100_000),
    Figure("drain 2 proc, spawn -> last result", "drain_process_total", "drain_process_total", "tasks/s",
           ",.0f", ">= 3x Huey", ratio_at_least(3)),
    Figure("drain 2 proc, spawn -> first result", "drain_process_first", "drain_process_first", "s", ".3f"),
    Figure("drain 2 proc, after the first result", "drain_process_after", "drain_process_after", "tasks/s",
           ",.0f"),
    Figure("drain 8 thr, spawn -> last result", "drain_thread_total", "drain_thread_total", "tasks/s",
           ",.0f", ">= 5x Huey", ratio_at_least(5)),
    Figure("drain 8 thr, spawn -> first result", "drain_thread_first", "drain_thread_first", "s", ".3f"),
    Figure("drain 8 thr, after the first result", "drain_thread_after", "drain_thread_after", "tasks/s", ",.0f"),
    Figure("spawn -> READY=1", "ready", None, "s", ".3f", "<= 0.4 s", at_most(0.4)),
    Figure("spawn -> first result", "first", "first", "s", ".3f", "<= 0.5 s and <= 1.5x Huey",
           lambda c, h: c <= 0.5 and h is not None and c <= 1.5 * h),
    Figure("enqueue -> result p50, process task", "lat_process_p50", "lat_p50", "ms", ".2f", "<= 1 ms", at_most(1)),
    Figure("enqueue -> result p90, process task", "lat_process_p90", "lat_p90", "ms", ".2f"),
    Figure("enqueue -> result p99, process task", "lat_process_p99", "lat_p99", "ms", ".2f", "<= 5 ms", at_most(5)),
    Figure("enqueue -> result p50, thread task", "lat_thread_p50", "lat_p50", "ms", ".2f", "<= 1 ms", at_most(1)),
    Figure("enqueue -> result p90, thread task", "lat_thread_p90", "lat_p90", "ms", ".2f"),
    Figure("enqueue -> result p99, thread task", "lat_thread_p99", "lat_p99", "ms", ".2f", "<= 5 ms", at_most(5)),
    Figure("CPU-heavy efficiency, 2 proc", "cpu_eff", "cpu_eff", "", ".3f", ">= 0.95", lambda c, h: c >= 0.95),
    Figure("idle daemon CPU", "idle", "idle", "% core", ".2f", "<= 1 %", at_most(1)),
]


def fmt_runs(values: list[float], fmt: str) -> str:
    return "[" + ", ".join(format(v, fmt) for v in values) + "]"


def main() -> None:
    names = sorted({w.name for w in WORKLOADS})
    parser = argparse.ArgumentParser(description="castor beside Huey (SqliteHuey), measured from outside")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(names), help=f"comma-separated, of: {','.join(names)}")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--delay-n", type=int, default=10_000)
    parser.add_argument("--batch-n", type=int, default=100_000)
    parser.add_argument("--drain-n", type=int, default=10_000)
    parser.add_argument("--latency-n", type=int, default=300)
    parser.add_argument("--burn-n", type=int, default=200)
    parser.add_argument("--burn-ms", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--huey-quiet", action="store_true", help="run huey_consumer with -q (not stock)")
    parser.add_argument("--castor-durable", action="store_true",
                        help="castor Manager(durable=True): synchronous=FULL, as Huey's stock (not castor's stock)")
    parser.add_argument("--castor-log-level", choices=("debug", "info", "warning"),
                        help="castord --log-level (default info: one line per task end, as Huey's INFO)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if unknown := only - set(names):
        parser.error(f"unknown workload(s) {sorted(unknown)}; choose from {names}")
    compile_castor()  # as an installed castor (benchmarks/installed.py)
    cfg = Config(args.delay_n, args.batch_n, args.drain_n, args.latency_n, args.burn_n, args.burn_ms,
                 args.idle_seconds, args.huey_quiet, args.castor_durable)

    if args.castor_durable:
        os.environ["CASTOR_BENCH_DURABLE"] = "1"
    if args.castor_log_level:  # every castord started below reads it
        os.environ["CASTORD_LOG_LEVEL"] = args.castor_log_level
    import huey  # noqa: PLC0415 - only to print its version

    started = time.monotonic()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, huey {huey.__version__}, "
          f"median of {args.runs} runs; ratio = castor / Huey; completion polled every {POLL * 1000:.0f} ms"
          + ("; huey_consumer -q" if cfg.huey_quiet else "")
          + ("; castor durable=True" if args.castor_durable else "")
          + (f"; castord --log-level {args.castor_log_level}" if args.castor_log_level else ""), flush=True)
    values: dict[str, dict[str, list[float]]] = {"castor": {}, "huey": {}, "control": {}}

    def control(when: str) -> None:
        for sync, fn in (("NORMAL", raw_sqlite), ("FULL", raw_sqlite_full)):
            runs = [fn() for _ in range(args.runs)]
            values["control"][f"{sync}_{when}"] = runs
            print(f"control ({when}): raw sqlite3 single-row commits, synchronous={sync:<6s} "
                  f"{statistics.median(runs):>9,.0f} /s   runs: {fmt_runs(runs, ',.0f')}", flush=True)

    control("before")
    for workload in WORKLOADS:
        if workload.name not in only:
            continue
        produced: set[str] = set()
        for run in range(args.runs):
            peers: list[tuple[str, Runner]] = [("castor", workload.castor)]
            if workload.huey is not None:
                peers.append(("huey", workload.huey))
            for peer, runner in peers if run % 2 == 0 else reversed(peers):
                for key, value in runner(cfg).items():
                    values[peer].setdefault(key, []).append(value)
                    produced.add(key)
        print(f"\n{workload.title}  ({time.monotonic() - started:.0f} s in)", flush=True)
        for fig in FIGURES:
            if fig.castor in produced:
                print_figure(fig, values)
    control("after")
    print_summary(values)
    if args.json:
        args.json.write_text(json.dumps({"python": sys.version, "cores": os.cpu_count(),
                                         "huey": huey.__version__, "config": cfg.__dict__, "runs": values,
                                         "medians": medians(values), "elapsed_s": time.monotonic() - started},
                                        indent=2))
    print(f"\n{time.monotonic() - started:.0f} s in all")


def medians(values: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {peer: {k: statistics.median(v) for k, v in figures.items()} for peer, figures in values.items()}


def figure_medians(fig: Figure, values: dict[str, dict[str, list[float]]]) -> tuple[float | None, float | None]:
    castor = statistics.median(values["castor"][fig.castor]) if fig.castor in values["castor"] else None
    huey = statistics.median(values["huey"][fig.huey]) if fig.huey in values["huey"] else None
    return castor, huey


def print_figure(fig: Figure, values: dict[str, dict[str, list[float]]]) -> None:
    castor, huey = figure_medians(fig, values)
    unit = f" ({fig.unit})" if fig.unit else ""
    line = f"  {fig.label + unit:46s}"
    if huey is not None:
        line += f" Huey {format(huey, fig.fmt):>8s} {fmt_runs(values['huey'][fig.huey or ''], fig.fmt)}"
    if castor is not None:
        line += f"  castor {format(castor, fig.fmt):>8s} {fmt_runs(values['castor'][fig.castor or ''], fig.fmt)}"
    if castor is not None and huey:
        line += f"  ratio {castor / huey:.3g}"
    print(line, flush=True)


def print_summary(values: dict[str, dict[str, list[float]]]) -> None:
    rows = [["figure", "Huey", "castor", "ratio", "target", "met"]]
    for fig in FIGURES:
        castor, huey = figure_medians(fig, values)
        if castor is None:
            continue
        unit = f" {fig.unit}" if fig.unit else ""
        met = "" if fig.check is None else ("yes" if fig.check(castor, huey) else "NO")
        rows.append([fig.label, "—" if huey is None else format(huey, fig.fmt) + unit,
                     format(castor, fig.fmt) + unit, f"{castor / huey:.3g}x" if huey else "—", fig.target, met])
    control = values["control"]
    for when in ("before", "after"):
        for sync in ("NORMAL", "FULL"):
            if runs := control.get(f"{sync}_{when}"):
                rows.append([f"control: raw sqlite3 commits, {sync} ({when})", "",
                             f"{statistics.median(runs):,.0f} /s", "", "", ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\nSummary (medians; ratio = castor / Huey: above 1 is better for rates and efficiency, "
          "below 1 for times and CPU)")
    for i, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in
                                enumerate(zip(row, widths, strict=True))) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


if __name__ == "__main__":
    main()
