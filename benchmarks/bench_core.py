"""Core figures for castor's store and worker engine (issue: castor core).

    .venv/bin/python benchmarks/bench_core.py [--runs 3] [--only enqueue,drain,latency,eta,idle,wal]

Every figure is the median of --runs runs, each on a fresh database in a temp
directory. No-op tasks, results stored, leases on. Workers are real processes
(`python -m castor`), started and stopped by pid. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

APP = textwrap.dedent('''
    import os
    import castor

    manager = castor.Manager(os.environ["CASTOR_BENCH_DB"])

    @manager.task(mode="process", name="noop")
    def noop(i):
        return i

    @manager.task(mode="thread", name="tnoop")
    def tnoop(i):
        return i

    @manager.task(mode="process", name="burn")
    def burn(ms):
        # Exactly `ms` of this process's CPU time, however the scheduler shares the cores.
        import time
        end = time.process_time() + ms / 1000
        while time.process_time() < end:
            pass
        return ms

    @manager.task(mode="process", name="blob")
    def blob(size):
        return "x" * size

    @manager.task(mode="process", name="measure")
    def measure(data):
        return len(data)
''')


class Bench:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="castor-bench-"))
        (self.dir / "benchapp.py").write_text(APP)
        self.db = str(self.dir / "bench.db")
        os.environ["CASTOR_BENCH_DB"] = self.db
        sys.path.insert(0, str(self.dir))
        sys.modules.pop("benchapp", None)
        import benchapp  # noqa: PLC0415 - generated per run

        self.app = benchapp
        self.procs: list[subprocess.Popen[bytes]] = []

    def worker(self, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": f"{self.dir}{os.pathsep}{REPO}"}
        proc = subprocess.Popen([sys.executable, "-m", "castor", "benchapp:manager", *args],
                                cwd=self.dir, env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(timeout=30)
        self.app.manager.close()
        sys.path.remove(str(self.dir))
        shutil.rmtree(self.dir, ignore_errors=True)

    def query(self, sql: str) -> list[tuple]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


def wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(0.01)


def raw_sqlite(n: int = 20_000, synchronous: str = "NORMAL") -> float:
    """Control figure: single-row INSERT + COMMIT/s in plain sqlite3 (WAL, NORMAL unless
    told: compare.py also takes it with FULL, Huey's setting).

    BEAVER.md quotes ~26,000/s for this machine kind; a run where this is low is a run
    on a slow moment of a shared machine, and every other figure scales with it.
    """
    directory = Path(tempfile.mkdtemp(prefix="castor-bench-raw-"))
    conn = sqlite3.connect(directory / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE t (x INTEGER)")
    start = time.perf_counter()
    for i in range(n):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    rate = n / (time.perf_counter() - start)
    conn.close()
    shutil.rmtree(directory, ignore_errors=True)
    return rate


def enqueue_delay(n: int = 10_000) -> float:
    b = Bench()
    try:
        noop = b.app.noop
        start = time.perf_counter()
        for i in range(n):
            noop.delay(i)
        return n / (time.perf_counter() - start)
    finally:
        b.close()


def enqueue_batch(n: int = 50_000) -> float:
    b = Bench()
    try:
        start = time.perf_counter()
        b.app.noop.map([(i,) for i in range(n)])
        return n / (time.perf_counter() - start)
    finally:
        b.close()


def drain(mode: str, n: int = 10_000) -> float:
    """Tasks/s from the first claim to the last settle, measured in the database."""
    b = Bench()
    try:
        fn = b.app.noop if mode == "process" else b.app.tnoop
        fn.map([(i,) for i in range(n)])
        if mode == "process":
            b.worker("--mode", "process")
            b.worker("--mode", "process")
        else:
            b.worker("--mode", "thread", "--threads", "8")
        return drained_rate(b, n)
    finally:
        b.close()


def drained_rate(b: Bench, n: int) -> float:
    """Wait until n tasks succeeded; tasks/s from the first claim to the last settle."""
    wait_for(lambda: b.query("SELECT count(*) FROM castor_tasks WHERE status='success'")[0][0] == n, 120)
    first, last = b.query("SELECT min(started_at), max(finished_at) FROM castor_tasks")[0]
    return n / (last - first)


def wal_peak(n: int = 60_000) -> float:
    """Largest WAL file (MB) seen while 2 workers drain n tasks (it must stay bounded)."""
    import threading

    b = Bench()
    try:
        b.app.noop.map([(i,) for i in range(n)])
        b.worker("--mode", "process")
        b.worker("--mode", "process")
        peak, done = 0, threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    peak = max(peak, os.path.getsize(b.db + "-wal"))
                except OSError:
                    pass
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        drained_rate(b, n)
        done.set()
        watcher.join()
        return peak / 1e6
    finally:
        b.close()


def latency(n: int = 500, mode: str = "process") -> tuple[float, float]:
    """Enqueue -> join returns, one task at a time, idle worker of `mode` (ms p50, p99)."""
    b = Bench()
    try:
        b.worker("--mode", mode, *(("--threads", "4") if mode == "thread" else ()))
        task = b.app.noop if mode == "process" else b.app.tnoop
        task.delay(-1).join(timeout=30)  # worker is up and idle
        return round_trips(b, n, task)
    finally:
        b.close()


def round_trips(b: Bench, n: int, task: Any = None) -> tuple[float, float]:
    """p50 and p99 (ms) of n delay() -> join() round trips, one at a time."""
    task = b.app.noop if task is None else task
    samples = []
    for i in range(n):
        start = time.perf_counter()
        task.delay(i).join(timeout=10)
        samples.append(time.perf_counter() - start)
        time.sleep(0.002)  # let the worker go idle again
    samples.sort()
    return samples[n // 2] * 1000, samples[int(n * 0.99) - 1] * 1000


def eta_lateness(n: int = 50, countdown: float = 0.2) -> tuple[float, float]:
    """How late an ETA task starts under an idle worker: started_at - eta (ms p50, max)."""
    b = Bench()
    try:
        b.worker("--mode", "process")
        b.app.noop.delay(-1).join(timeout=30)
        late = []
        for i in range(n):
            task = b.app.noop.apply_async((i,), countdown=countdown)
            task.join(timeout=10)
            record = task.info()
            late.append(record.started_at - record.eta)
        assert min(late) >= 0, "a task started before its ETA"
        late.sort()
        return late[n // 2] * 1000, late[-1] * 1000
    finally:
        b.close()


def idle_cpu(seconds: float = 10.0) -> float:
    """% of one core an idle worker process uses."""
    b = Bench()
    try:
        proc = b.worker("--mode", "process")
        b.app.noop.delay(-1).join(timeout=30)
        time.sleep(1.0)
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks

        before, start = cpu(), time.monotonic()
        time.sleep(seconds)
        return 100 * (cpu() - before) / (time.monotonic() - start)
    finally:
        b.close()


def median_of(runs: int, fn, *args):
    values = [fn(*args) for _ in range(runs)]
    if isinstance(values[0], tuple):
        return tuple(statistics.median(v[i] for v in values) for i in range(len(values[0]))), values
    return statistics.median(values), values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="enqueue,drain,latency,eta,idle,wal")
    args = parser.parse_args()
    only = set(args.only.split(","))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, median of {args.runs} runs")
    m, v = median_of(args.runs, raw_sqlite)
    print(f"control: raw sqlite3 commits {m:>9,.0f} /s   runs: {[round(x) for x in v]}")
    if "enqueue" in only:
        m, v = median_of(args.runs, enqueue_delay)
        print(f"enqueue .delay()          {m:>9,.0f} tasks/s   runs: {[round(x) for x in v]}")
        m, v = median_of(args.runs, enqueue_batch)
        print(f"enqueue batch (.map)      {m:>9,.0f} tasks/s   runs: {[round(x) for x in v]}")
    if "drain" in only:
        m, v = median_of(args.runs, drain, "process")
        print(f"drain 2 process workers   {m:>9,.0f} tasks/s   runs: {[round(x) for x in v]}")
        m, v = median_of(args.runs, drain, "thread")
        print(f"drain 8 threads           {m:>9,.0f} tasks/s   runs: {[round(x) for x in v]}")
    if "wal" in only:
        m, v = median_of(args.runs, wal_peak)
        print(f"WAL peak, 60,000-task drain {m:>9.1f} MB   runs: {[round(x, 1) for x in v]}")
    if "latency" in only:
        for mode in ("process", "thread"):
            (p50, p99), v = median_of(args.runs, latency, 500, mode)
            print(f"enqueue->join, {mode:<7}   p50 {p50:.2f} ms, p99 {p99:.2f} ms   "
                  f"runs: {[(round(a, 2), round(b, 2)) for a, b in v]}")
    if "eta" in only:
        (p50, worst), v = median_of(args.runs, eta_lateness)
        print(f"ETA lateness (idle)       p50 {p50:.2f} ms, max {worst:.2f} ms   "
              f"runs: {[(round(a, 2), round(b, 2)) for a, b in v]}")
    if "idle" in only:
        m, v = median_of(args.runs, idle_cpu)
        print(f"idle worker CPU           {m:>9.2f} % of a core   runs: {[round(x, 2) for x in v]}")


if __name__ == "__main__":
    main()
