"""Large backlogs (issue 12): castord beside a million future tasks and a queue it does not serve.

    .venv/bin/python benchmarks/bench_backlog.py [--runs 3] [--future 1000000] [--unserved 200000]
        [--variant plain|priority] [--code DIR] [--only idle,latency,status,stats,hot]

Each run, on a fresh database in a temp directory:

1. enqueues `--future` tasks due tomorrow with one `manager.enqueue_many()` (in a
   subprocess, timed: building the signatures, and the call), then `--unserved` tasks
   due now in queue "slow";
2. starts a real `castord start --queues fast --workers 2 --threads 4` and waits for
   READY=1 (NOTIFY_SOCKET bound here);
3. measures the whole castord process tree from /proc: idle CPU over 10 s, RSS;
4. times fresh tasks in queue "fast", `delay()` -> `join()` one at a time (process and
   thread mode), p50 and p99;
5. times `castord status APP` and `castord tasks stats APP` as subprocesses (medians
   of 3), beside the same commands on an empty database (the floor: interpreter
   start-up and imports);
6. stops castord by its pid and reports the database file's size.

`hot` (in `--only`) is the store's own cost on a busy worker's hot path, in this process:
the median time of one `settle_and_claim` (settle a task, claim the next, one
transaction) over 20,000 tasks on a fresh database with no backlog.

`--variant priority` puts the future tasks at priority 10, above everything due: a
claim that walked the index in claim order would step over all of them each time.
`--code DIR` runs another checkout's castor (e.g. a worktree of main, for "before").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procfs import cpu_seconds, descendants, rss_mb  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CASTORD = str(Path(sys.executable).parent / "castord")

APP = textwrap.dedent('''
    import os
    import castor

    manager = castor.Manager(os.environ["CASTOR_BENCH_DB"])

    @manager.task(mode="process", name="noop", queue="fast")
    def noop(i):
        return i

    @manager.task(mode="thread", name="tnoop", queue="fast")
    def tnoop(i):
        return i

    @manager.task(mode="process", name="later", queue="fast")
    def later(i):
        return i

    @manager.task(mode="process", name="elsewhere", queue="slow")
    def elsewhere(i):
        return i
''')

# Run in a subprocess: the enqueuing process's own memory is a figure too, and the
# benchmark's process must not keep a million handles alive.
FILL = textwrap.dedent('''
    import json, resource, sys, time
    import benchapp

    future, unserved, priority = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    out = {}
    start = time.perf_counter()
    signatures = [benchapp.later.s(i).set(countdown=86400, priority=priority) for i in range(future)]
    out["build_s"] = time.perf_counter() - start
    start = time.perf_counter()
    benchapp.manager.enqueue_many(signatures)
    out["enqueue_many_s"] = time.perf_counter() - start
    del signatures
    start = time.perf_counter()
    benchapp.elsewhere.map([(i,) for i in range(unserved)])
    out["map_unserved_s"] = time.perf_counter() - start
    benchapp.manager.close()
    out["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
''')


class Run:
    """One temp directory: the app, its database, an empty database for the floor."""

    def __init__(self, code: Path) -> None:
        self.code = code
        self.dir = Path(tempfile.mkdtemp(prefix="castor-backlog-"))
        (self.dir / "benchapp.py").write_text(APP)
        (self.dir / "fill.py").write_text(FILL)
        self.db = str(self.dir / "bench.db")
        self.empty_db = str(self.dir / "empty.db")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.manager: Any = None

    def env(self, db: str | None = None, **extra: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": f"{self.dir}{os.pathsep}{self.code}",
                "CASTOR_BENCH_DB": db or self.db, **extra}

    def fill(self, future: int, unserved: int, priority: int) -> dict[str, float]:
        out = subprocess.run([sys.executable, "fill.py", str(future), str(unserved), str(priority)],
                             cwd=self.dir, env=self.env(), check=True, capture_output=True, text=True)
        return json.loads(out.stdout)

    def app(self) -> Any:
        """The app, imported here (from --code) to enqueue fresh tasks and join them."""
        if self.manager is None:
            os.environ["CASTOR_BENCH_DB"] = self.db
            if str(self.code) not in sys.path:  # castor itself is imported once, from --code
                sys.path.insert(0, str(self.code))
            sys.path.insert(0, str(self.dir))
            sys.modules.pop("benchapp", None)
            import benchapp  # noqa: PLC0415 - generated per run

            self.manager = benchapp
        return self.manager

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)
        if self.manager is not None:
            self.manager.manager.close()
            sys.path.remove(str(self.dir))
        shutil.rmtree(self.dir, ignore_errors=True)

    def size_mb(self) -> float:
        return sum(os.path.getsize(self.db + s) for s in ("", "-wal", "-shm")
                   if os.path.exists(self.db + s)) / 1e6


def stop(proc: subprocess.Popen[bytes]) -> None:
    """TERM by pid, then KILL by pid if it does not go."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Daemon:
    def __init__(self, run: Run, *args: str) -> None:
        self.sock_path = str(run.dir / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [CASTORD, "start", "benchapp:manager", "--log-format", "json",
             "--log-file", str(run.dir / "castord.log"), *args],
            cwd=run.dir, env=run.env(NOTIFY_SOCKET=self.sock_path), start_new_session=True)
        run.procs.append(self.proc)

    def wait_ready(self, timeout: float = 120) -> float:
        self.sock.settimeout(timeout)
        while b"READY=1" not in self.sock.recv(4096):
            pass
        return time.perf_counter() - self.started

    def tree(self) -> list[int]:
        return descendants(self.proc.pid)


def idle_cpu(daemon: Daemon, seconds: float) -> float:
    """% of one core the whole castord tree uses over `seconds` while nothing is due for it."""
    pids = daemon.tree()
    before, start = sum(cpu_seconds(p) for p in pids), time.monotonic()
    time.sleep(seconds)
    return 100 * (sum(cpu_seconds(p) for p in pids) - before) / (time.monotonic() - start)


def round_trips(task: Any, n: int, budget: float) -> tuple[float, float, int]:
    """p50, p99 (ms) and count of delay() -> join() round trips, one at a time, within `budget` s."""
    samples: list[float] = []
    deadline = time.monotonic() + budget
    for i in range(n):
        start = time.perf_counter()
        task.delay(i).join(timeout=120)
        samples.append(time.perf_counter() - start)
        if time.monotonic() > deadline:
            break
        time.sleep(0.002)  # let the children go idle again
    samples.sort()
    return (samples[len(samples) // 2] * 1000, samples[max(0, int(len(samples) * 0.99) - 1)] * 1000,
            len(samples))


def command_s(run: Run, db: str, *args: str, repeat: int = 3) -> float:
    """Median wall time of `castord ARGS` as a subprocess."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run([CASTORD, *args], cwd=run.dir, env=run.env(db), stdout=subprocess.DEVNULL)
        if done.returncode not in (0, 3):  # 3: `status` found no castord (the floor's empty database)
            raise RuntimeError(f"castord {' '.join(args)} exited {done.returncode}")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def hot_path(code: Path, n: int = 20_000) -> float:
    """µs per settle_and_claim(limit=1): settle one task and claim the next, as a busy
    process child does for every task (no IPC, no task code)."""
    if str(code) not in sys.path:
        sys.path.insert(0, str(code))
    from castor.ids import new_task_id  # noqa: PLC0415 - from --code
    from castor.states import TaskStatus  # noqa: PLC0415
    from castor.store import NewTask, open_store  # noqa: PLC0415
    from castor.store.base import Settlement  # noqa: PLC0415

    directory = tempfile.mkdtemp(prefix="castor-hot-")
    store = open_store(os.path.join(directory, "hot.db"))
    try:
        now = time.time()
        store.enqueue([NewTask(new_task_id(), "noop", "process", "json", "[1]", "{}", now, now) for _ in range(n)])
        (record,) = store.claim("w", mode="process", queues=None, limit=1, lease=30.0, now=now)
        times = []
        for _ in range(n - 1):
            done = Settlement(record.id, "w", record.attempts, TaskStatus.SUCCESS, result="1", finished_at=now,
                              fence=record.fence)
            start = time.perf_counter()
            _accepted, (record,) = store.settle_and_claim([done], "w", mode="process", queues=None, limit=1,
                                                          lease=30.0, now=now)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e6
    finally:
        store.close()
        shutil.rmtree(directory, ignore_errors=True)


def one_run(args: argparse.Namespace) -> dict[str, float]:
    only = set(args.only.split(","))
    run = Run(Path(args.code).resolve())
    out: dict[str, float] = {}
    if "hot" in only:
        out["hot_us"] = hot_path(run.code)
    try:
        priority = 10 if args.variant == "priority" else 0
        filled = run.fill(args.future, args.unserved, priority)
        out.update(filled)
        out["db_mb"] = run.size_mb()
        daemon = Daemon(run, "--queues", "fast", "--workers", "2", "--threads", "4")
        out["ready_s"] = daemon.wait_ready()
        app = run.app()
        app.noop.delay(-1).join(timeout=120)  # a process child is up and idle
        app.tnoop.delay(-1).join(timeout=120)  # and the thread host
        time.sleep(2.0)
        if "idle" in only:
            out["idle_cpu_pct"] = idle_cpu(daemon, args.idle_seconds)
        pids = daemon.tree()
        out["rss_tree_mb"] = sum(rss_mb(p) for p in pids)
        out["rss_master_mb"] = rss_mb(daemon.proc.pid)
        if "latency" in only:
            out["join_p50_ms"], out["join_p99_ms"], out["join_n"] = round_trips(app.noop, args.trips, 30)
            out["tjoin_p50_ms"], out["tjoin_p99_ms"], out["tjoin_n"] = round_trips(app.tnoop, args.trips, 30)
        if "status" in only:
            out["status_s"] = command_s(run, run.db, "status", "benchapp:manager")
            out["status_floor_s"] = command_s(run, run.empty_db, "status", "benchapp:manager")
        if "stats" in only:
            out["stats_s"] = command_s(run, run.db, "tasks", "stats", "benchapp:manager")
            out["stats_floor_s"] = command_s(run, run.empty_db, "tasks", "stats", "benchapp:manager")
        stop(daemon.proc)
        daemon.sock.close()
        out["db_after_mb"] = run.size_mb()
        return out
    finally:
        run.close()


FIGURES = [
    ("build_s", "build 1M signatures (s)", ".2f"),
    ("enqueue_many_s", "enqueue_many(future) (s)", ".2f"),
    ("map_unserved_s", "map(unserved) (s)", ".2f"),
    ("rss_peak_mb", "enqueuing process peak RSS (MB)", ".0f"),
    ("db_mb", "database + WAL after enqueue (MB)", ".0f"),
    ("ready_s", "castord start -> READY=1 (s)", ".2f"),
    ("idle_cpu_pct", "idle castord tree CPU (% of a core)", ".2f"),
    ("rss_tree_mb", "castord tree RSS (MB)", ".0f"),
    ("rss_master_mb", "castord master RSS (MB)", ".0f"),
    ("join_p50_ms", "delay->join process p50 (ms)", ".2f"),
    ("join_p99_ms", "delay->join process p99 (ms)", ".2f"),
    ("join_n", "  round trips measured", ".0f"),
    ("tjoin_p50_ms", "delay->join thread p50 (ms)", ".2f"),
    ("tjoin_p99_ms", "delay->join thread p99 (ms)", ".2f"),
    ("status_s", "castord status (s)", ".3f"),
    ("status_floor_s", "  same, empty database (s)", ".3f"),
    ("stats_s", "castord tasks stats (s)", ".3f"),
    ("stats_floor_s", "  same, empty database (s)", ".3f"),
    ("db_after_mb", "database + WAL after castord stopped (MB)", ".0f"),
    ("hot_us", "settle_and_claim, no backlog (µs, in-process)", ".1f"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--future", type=int, default=1_000_000)
    parser.add_argument("--unserved", type=int, default=200_000)
    parser.add_argument("--variant", choices=("plain", "priority"), default="plain")
    parser.add_argument("--code", default=str(REPO), help="the checkout whose castor to run")
    parser.add_argument("--only", default="idle,latency,status,stats,hot")
    parser.add_argument("--trips", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", args.code, "log", "-1", "--format=%h %s"], capture_output=True,
                            text=True).stdout.strip()[:70]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, code {args.code} ({commit}), "
          f"{args.future:,} future + {args.unserved:,} unserved, variant {args.variant}, "
          f"median of {args.runs} runs", flush=True)
    runs = []
    for i in range(args.runs):
        runs.append(one_run(args))
        print(f"run {i + 1}: " + json.dumps({k: round(v, 3) for k, v in runs[-1].items()}), flush=True)
    for key, label, fmt in FIGURES:
        values = [r[key] for r in runs if key in r]
        if values:
            print(f"{label:44s} {format(statistics.median(values), fmt):>10s}   runs: "
                  f"{[float(format(v, fmt)) for v in values]}")


if __name__ == "__main__":
    main()
