"""What a chain link costs (issue 16), measured from outside through castord, on both stores.

    .venv/bin/python benchmarks/workflows.py [--runs 3] [--links 1000] [--members 10000]
        [--stores sqlite,postgresql]

For each store (a beaver-db file in a temp dir; a fresh database on a private throwaway
PostgreSQL, fsync on) and each run, with one `castord start APP --workers 2 --threads 4`
already running (READY), in the same run:

* chain: `castor.chain(inc.s(0), inc.s(), ..., inc.s())` of --links links (each returns
  its input + 1), from `.delay()` to `join()` returning --links;
* its peer, what users do without chains: the same --links calls driven by the client,
  `x = inc.delay(x).join()` in a loop;

both with process tasks and with thread tasks; then

* chord: `castor.chord([inc.s(i) for i in range(--members)], total.s())` (the callback
  sums the members' results), from `.delay()` to `join()` returning the sum;
* its peer: the same --members plain tasks by `.map`, the client joins each, then sums;
* --chords K chords at once, of --members / K members each (all enqueued, then each
  joined): the same members over K workflow rows instead of one, so that workers settling
  members of different chords do not queue on one row's lock (PostgreSQL's advance holds
  it from the advance statement to COMMIT).

On PostgreSQL also the rows written per
task: the difference in `pg_stat_user_tables` (n_tup_ins + n_tup_upd + n_tup_del of castor_tasks,
castor_workflows and castor_watches) over the workload, divided by its tasks (read once
the counts stayed the same for 11 s: every backend has reported, `_tuple_writes`).

Prints every run, then the medians and the chain's ratio to its peer. castord is stopped
by its pid in a `finally`.
"""

from __future__ import annotations

import argparse
import os
import shutil
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
from compare import stop_by_pid  # noqa: E402
from fresh_stores import locations  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CASTORD = str(Path(sys.executable).parent / "castord")

APP = textwrap.dedent('''
    import os
    import castor

    manager = castor.Manager(os.environ["WF_BENCH_URL"])

    @manager.task(mode="process", name="inc")
    def inc(x):
        return x + 1

    @manager.task(mode="thread", name="tinc")
    def tinc(x):
        return x + 1

    @manager.task(mode="thread", name="total")
    def total(results):
        return sum(results)
''')


class Run:
    """A temp dir with the app on one store, and castord started from it (READY)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dir = Path(tempfile.mkdtemp(prefix="castor-wf-bench-"))
        (self.dir / "wfapp.py").write_text(APP)
        os.environ["WF_BENCH_URL"] = url
        sys.path.insert(0, str(self.dir))
        sys.modules.pop("wfapp", None)
        import wfapp  # noqa: PLC0415 - generated per run

        self.app: Any = wfapp
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.dir / "notify"))
        self.notify.settimeout(60)
        env = {**os.environ, "PYTHONPATH": f"{self.dir}{os.pathsep}{REPO}", "NOTIFY_SOCKET": str(self.dir / "notify")}
        self.log = open(self.dir / "castord.log", "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([CASTORD, "start", "wfapp:manager", "--workers", "2", "--threads", "4"],
                                     cwd=self.dir, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        while b"READY=1" not in self.notify.recv(4096):
            pass

    def chain(self, name: str, links: int) -> float:
        import castor  # noqa: PLC0415 - after sys.path has the repo

        task = getattr(self.app, name)
        started = time.perf_counter()
        workflow = castor.chain(task.s(0), *(task.s() for _ in range(links - 1))).delay()
        assert workflow.join(timeout=600) == links
        return time.perf_counter() - started

    def driven(self, name: str, links: int) -> float:
        task = getattr(self.app, name)
        started = time.perf_counter()
        x = 0
        for _ in range(links):
            x = task.delay(x).join(timeout=60)
        assert x == links
        return time.perf_counter() - started

    def chord(self, members: int) -> float:
        import castor  # noqa: PLC0415 - after sys.path has the repo

        started = time.perf_counter()
        workflow = castor.chord([self.app.inc.s(i) for i in range(members)], self.app.total.s()).delay()
        assert workflow.join(timeout=600) == sum(range(1, members + 1))
        return time.perf_counter() - started

    def chords(self, count: int, members: int) -> float:
        import castor  # noqa: PLC0415 - after sys.path has the repo

        size = members // count
        started = time.perf_counter()
        workflows = [castor.chord([self.app.inc.s(k * size + i) for i in range(size)], self.app.total.s()).delay()
                     for k in range(count)]
        total = sum(w.join(timeout=600) for w in workflows)
        assert total == sum(range(1, count * size + 1))
        return time.perf_counter() - started

    def mapped(self, members: int) -> float:
        started = time.perf_counter()
        handles = self.app.inc.map((i,) for i in range(members))
        assert sum(h.join(timeout=600) for h in handles) == sum(range(1, members + 1))
        return time.perf_counter() - started

    def close(self) -> None:
        stop_by_pid(self.proc)
        self.log.close()
        self.notify.close()
        self.app.manager.close()
        sys.path.remove(str(self.dir))
        sys.modules.pop("wfapp", None)
        shutil.rmtree(self.dir, ignore_errors=True)


def _tuple_writes(url: str) -> int:
    """Rows inserted, updated and deleted in castor's tables so far, as the statistics
    collector counts them (each backend reports at its transaction's end, within about a
    second: read twice until two reads agree)."""
    import psycopg  # noqa: PLC0415

    def read() -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            # The tasks' own tables: not castor_daemons, which castord's heartbeat writes every second.
            row = conn.execute("SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables "
                               "WHERE relname IN ('castor_tasks', 'castor_workflows', 'castor_watches')").fetchone()
            return int(row[0]) if row else 0

    # A busy backend reports at its transaction's end (at most once a second), an idle one
    # within 10 s (PostgreSQL 15's PGSTAT_IDLE_INTERVAL): unchanged for 11 s is all of it.
    last, since = read(), time.monotonic()
    while time.monotonic() - since < 11:
        time.sleep(1.0)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last


def one_run(store: str, url: str, links: int, members: int, chords: int) -> dict[str, float]:
    run = Run(url)
    figures: dict[str, float] = {}
    try:
        for label, name in (("process", "inc"), ("thread", "tinc")):
            before = _tuple_writes(url) if store == "postgresql" else 0
            seconds = run.chain(name, links)
            figures[f"chain of {links}, {label}: s"] = seconds
            if store == "postgresql":
                figures[f"chain of {links}, {label}: rows written per task"] = (_tuple_writes(url) - before) / links
            before = _tuple_writes(url) if store == "postgresql" else 0
            figures[f"client-driven {links}, {label}: s"] = run.driven(name, links)
            if store == "postgresql":
                figures[f"client-driven {links}, {label}: rows written per task"] = (
                    (_tuple_writes(url) - before) / links)
        for label, measure in (("chord", run.chord), ("map and join each", run.mapped)):
            before = _tuple_writes(url) if store == "postgresql" else 0
            figures[f"{label} of {members}: s"] = measure(members)
            if store == "postgresql":
                figures[f"{label} of {members}: rows written per task"] = (_tuple_writes(url) - before) / members
        if chords > 1:
            figures[f"{chords} chords of {members // chords} at once: s"] = run.chords(chords, members)
        return figures
    finally:
        run.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--links", type=int, default=1000)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--chords", type=int, default=4, help="K chords at once (1: not measured)")
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args()
    for store in args.stores.split(","):
        runs = []
        with locations(store, "wf") as fresh:
            for k in range(args.runs):
                figures = one_run(store, next(fresh), args.links, args.members, args.chords)
                runs.append(figures)
                print(f"{store} run {k + 1}: " + "; ".join(f"{name} {v:,.2f}" for name, v in figures.items()),
                      flush=True)
        medians = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
        print(f"\n{store}: medians of {args.runs}")
        for name, value in medians.items():
            print(f"  {name:50s} {value:10,.2f}")
        for label in ("process", "thread"):
            chain, driven = medians[f"chain of {args.links}, {label}: s"], medians[f"client-driven {args.links}, {label}: s"]
            print(f"  {label}: the chain takes {chain / driven:.2f}x the client-driven loop's time")
        chord, mapped = medians[f"chord of {args.members}: s"], medians[f"map and join each of {args.members}: s"]
        print(f"  the chord takes {chord / mapped:.2f}x the time of .map and a join each")
        if args.chords > 1:
            several = medians[f"{args.chords} chords of {args.members // args.chords} at once: s"]
            print(f"  {args.chords} chords at once take {several / chord:.2f}x the one chord's time")
        print()


if __name__ == "__main__":
    main()
