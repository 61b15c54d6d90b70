"""castord figures (issue: castord): start-up, respawn, idle CPU, drain and latency through it.

    .venv/bin/python benchmarks/bench_castord.py [--runs 5]
        [--only ready,first,respawn,idle,drain,latency,cpu,payload]

Each run starts a fresh castord (2 process children, 8 threads unless stated) on a
fresh database, with NOTIFY_SOCKET bound here, and stops it by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import REPO, Bench, drained_rate, round_trips  # noqa: E402
from procfs import cpu_seconds, descendants  # noqa: E402

CASTORD = str(Path(sys.executable).parent / "castord")

# The documented way to build a Manager: on the application's own BeaverDB (the
# bench app gives Manager the path). Same task names, so either app runs the other's tasks.
BEAVER_APP = """
import os
import castor
from beaver import BeaverDB

manager = castor.Manager(BeaverDB(os.environ["CASTOR_BENCH_DB"]))

@manager.task(mode="process", name="noop")
def noop(i):
    return i

@manager.task(mode="thread", name="tnoop")
def tnoop(i):
    return i
"""


class Daemon:
    def __init__(self, bench: Bench, *args: str, app: str = "benchapp:manager"):
        self.sock_path = str(bench.dir / f"notify-{time.monotonic_ns()}")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.log = bench.dir / "castord.log"
        env = {**os.environ, "PYTHONPATH": f"{bench.dir}{os.pathsep}{REPO}", "NOTIFY_SOCKET": self.sock_path}
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [CASTORD, "start", app, "--log-format", "json", "--log-file", str(self.log), *args],
            cwd=bench.dir, env=env, start_new_session=True)
        bench.procs.append(self.proc)  # so Bench.close() stops it even if a run fails

    def wait_ready(self, timeout: float = 30) -> float:
        self.sock.settimeout(timeout)
        while b"READY=1" not in self.sock.recv(4096):
            pass
        return time.perf_counter() - self.started

    def descendants(self) -> list[int]:
        return descendants(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.sock.close()


def ready() -> float:
    b = Bench()
    try:
        d = Daemon(b, "--workers", "2", "--threads", "8")
        elapsed = d.wait_ready()
        d.stop()
        return elapsed
    finally:
        b.close()


def first_result(queued: int = 1, app: str = "path") -> tuple[float, float, float]:
    """`queued` no-op process tasks in the file before castord starts (2 process
    children, 8 threads; APP's Manager on a path, or on a BeaverDB): seconds from
    spawn to READY=1, to the first finished_at the database holds, and to a
    read-only poll (every 5 ms, from here) seeing the first success."""
    b = Bench()
    try:
        b.app.noop.map([(i,) for i in range(queued)])
        conn = sqlite3.connect(f"file:{b.db}?mode=ro", uri=True)
        name = "benchapp:manager"
        if app == "beaver":
            (b.dir / "beaverapp.py").write_text(BEAVER_APP)
            name = "beaverapp:manager"
        d = Daemon(b, "--workers", "2", "--threads", "8", app=name)
        epoch = time.time() - (time.perf_counter() - d.started)  # the spawn, on the wall clock
        ready_at = None
        d.sock.setblocking(False)
        deadline = time.perf_counter() + 30
        while True:
            if ready_at is None:
                try:
                    if b"READY=1" in d.sock.recv(4096):
                        ready_at = time.perf_counter() - d.started
                except BlockingIOError:
                    pass
            if conn.execute("SELECT 1 FROM castor_tasks WHERE status = 'success' LIMIT 1").fetchone():
                noticed = time.perf_counter() - d.started
                break
            if time.perf_counter() > deadline:
                raise TimeoutError("no first result")
            time.sleep(0.005)
        stored = conn.execute("SELECT min(finished_at) FROM castor_tasks WHERE status = 'success'"
                              ).fetchone()[0] - epoch
        conn.close()
        if ready_at is None:
            d.sock.setblocking(True)
            ready_at = d.wait_ready()
        d.stop()
        return ready_at, stored, noticed
    finally:
        b.close()


def respawn() -> float:
    """SIGKILL the only process child; seconds until its replacement starts a task."""
    b = Bench()
    try:
        d = Daemon(b, "--workers", "1", "--threads", "0")
        d.wait_ready()
        b.app.noop.delay(0).join(timeout=10)
        spawned = [json.loads(line) for line in d.log.read_text().splitlines()]
        victim = [e["child_pid"] for e in spawned if e["event"] == "child.spawned"][-1]
        killed = time.time()
        os.kill(victim, signal.SIGKILL)
        task = b.app.noop.delay(1)
        task.join(timeout=30)
        elapsed = task.info().started_at - killed
        d.stop()
        return elapsed
    finally:
        b.close()


def idle_cpu(seconds: float = 10.0) -> float:
    """% of one core the whole idle daemon (master, fork server, children) uses."""
    b = Bench()
    try:
        d = Daemon(b, "--workers", "2", "--threads", "8")
        d.wait_ready()
        time.sleep(1.0)
        pids = d.descendants()
        before = sum(cpu_seconds(p) for p in pids)
        start = time.monotonic()
        time.sleep(seconds)
        used = sum(cpu_seconds(p) for p in pids) - before
        d.stop()
        return 100 * used / (time.monotonic() - start)
    finally:
        b.close()


def drain(mode: str, n: int = 10_000) -> float:
    b = Bench()
    try:
        fn = b.app.noop if mode == "process" else b.app.tnoop
        fn.map([(i,) for i in range(n)])
        args = ("--workers", "2", "--threads", "0") if mode == "process" else ("--workers", "0", "--threads", "8")
        d = Daemon(b, *args)
        rate = drained_rate(b, n)
        d.stop()
        return rate
    finally:
        b.close()


def latency(n: int = 500) -> tuple[float, float]:
    b = Bench()
    try:
        d = Daemon(b, "--workers", "2", "--threads", "8")
        d.wait_ready()
        result = round_trips(b, n)
        d.stop()
        return result
    finally:
        b.close()


def cpu_efficiency(n: int = 200, ms: int = 20, workers: int = 2) -> float:
    """Ideal wall time (n × ms of CPU spread over the process children) ÷ measured,
    from the moment the tasks are enqueued on a READY castord to the last settle."""
    b = Bench()
    try:
        d = Daemon(b, "--workers", str(workers), "--threads", "0")
        d.wait_ready()
        b.app.burn.delay(0).join(timeout=10)  # both children warm
        start = time.time()
        tasks = b.app.burn.map([(ms,) for _ in range(n)])
        for task in tasks:
            task.join(timeout=120)
        last = b.query("SELECT max(finished_at) FROM castor_tasks")[0][0]
        d.stop()
        return (n * ms / 1000 / workers) / (last - start)
    finally:
        b.close()


def payload(n: int = 100, size: int = 1 << 20) -> tuple[float, float]:
    """1 MB results through castord (2 process children): MB/s from enqueue until every
    result is read back by join(), and the p50 (ms) of one 1 MB enqueue -> join round trip."""
    b = Bench()
    try:
        d = Daemon(b, "--workers", "2", "--threads", "0")
        d.wait_ready()
        start = time.perf_counter()
        tasks = b.app.blob.map([(size,) for _ in range(n)])
        got = sum(len(task.join(timeout=120)) for task in tasks)
        assert got == n * size
        throughput = got / (1 << 20) / (time.perf_counter() - start)
        samples = []
        for _ in range(20):
            t0 = time.perf_counter()
            assert b.app.measure.delay("y" * size).join(timeout=30) == size  # 1 MB argument
            samples.append(time.perf_counter() - t0)
        d.stop()
        return throughput, statistics.median(samples) * 1000
    finally:
        b.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="ready,first,respawn,idle,drain,latency,cpu,payload")
    args = parser.parse_args()
    only = set(args.only.split(","))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, median of {args.runs} runs")

    def report(label: str, fn, fmt: str, *fargs) -> None:  # noqa: ANN001
        values = [fn(*fargs) for _ in range(args.runs)]
        if isinstance(values[0], tuple):
            med = tuple(statistics.median(v[i] for v in values) for i in range(2))
            print(f"{label:34s} p50 {med[0]:.2f} ms, p99 {med[1]:.2f} ms   runs: "
                  f"{[(round(a, 2), round(c, 2)) for a, c in values]}")
        else:
            print(f"{label:34s} {format(statistics.median(values), fmt)}   runs: "
                  f"{[round(v, 3) for v in values]}")

    if "ready" in only:
        report("start -> READY=1 (s)", ready, ".3f")
    if "first" in only:
        for queued, app in ((1, "path"), (10_000, "path"), (1, "beaver")):
            values = [first_result(queued, app) for _ in range(args.runs)]
            med = [statistics.median(v[i] for v in values) for i in range(3)]
            label = f"spawn -> first result, {queued:,} queued, {app} APP"
            print(f"{label:34s}\n    READY {med[0]:.3f} s, stored {med[1]:.3f} s, seen {med[2]:.3f} s"
                  f"   runs (READY, seen): {[(round(v[0], 3), round(v[2], 3)) for v in values]}")
    if "respawn" in only:
        report("child SIGKILL -> replacement claims (s)", respawn, ".3f")
    if "idle" in only:
        report("idle daemon CPU (% of a core)", idle_cpu, ".2f")
    if "drain" in only:
        report("drain via castord, 2 proc (tasks/s)", drain, ",.0f", "process")
        report("drain via castord, 8 thr (tasks/s)", drain, ",.0f", "thread")
    if "latency" in only:
        report("enqueue->join via castord", latency, "")
    if "cpu" in only:
        report("CPU-heavy 200 x 20 ms, 2 proc (eff.)", cpu_efficiency, ".3f")
    if "payload" in only:
        payloads = [payload() for _ in range(args.runs)]
        print(f"{'1 MB results, 2 proc (MB/s)':34s} {statistics.median(v[0] for v in payloads):,.0f}   runs: "
              f"{[round(v[0]) for v in payloads]}")
        print(f"{'1 MB argument round trip (ms p50)':34s} {statistics.median(v[1] for v in payloads):.1f}   runs: "
              f"{[round(v[1], 1) for v in payloads]}")


if __name__ == "__main__":
    main()
