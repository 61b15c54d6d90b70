"""What flow control costs (issue 16), measured from outside through castord, on both stores.

    .venv/bin/python benchmarks/flow_control.py [--runs 3] [--n 5000] [--stores sqlite,postgresql]

For each store (a beaver-db file in a temp dir; a fresh database on a private throwaway
PostgreSQL, fsync on), each run drains --n no-op thread tasks queued before
`castord start APP --workers 0 --threads 8`, from spawn to the last one counted
`success` (a read of the task counts every 20 ms), three ways in the same run:

* plain: a task name with no limit;
* rate-limited, not binding: the same task under `rate_limit="1000000/s"`, far above what
  the host can start, so the figure is what the limited claim itself costs (the token
  buckets read and taken inside every claim's transaction);
* concurrency-limited, not binding: the same task under `concurrency=100` (8 threads run
  at most 8): what counting the running tasks in every claim costs;
* rate-limited, binding: `rate_limit="500/s"` (burst 1), over --n / 2 tasks: spawn to last
  as above (start-up included), and the rate the fleet really kept: the tasks' recorded
  starts, (n - 1) / (last start - first start), against 500/s.

Prints every run, then the medians and the ratio of each to plain. Every castord is
stopped by its pid in a `finally`.
"""

from __future__ import annotations

import argparse
import os
import shutil
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
BINDING_RATE = 500

APP = textwrap.dedent(f'''
    import os
    import castor

    manager = castor.Manager(os.environ["FLOW_BENCH_URL"])

    @manager.task(mode="thread", name="plain")
    def plain(i):
        return i

    @manager.task(mode="thread", name="loose", rate_limit="1000000/s")
    def loose(i):
        return i

    @manager.task(mode="thread", name="tight", rate_limit="{BINDING_RATE}/s", rate_burst=1)
    def tight(i):
        return i

    @manager.task(mode="thread", name="capped", concurrency=100)
    def capped(i):
        return i
''')


class Run:
    """A temp dir with the app on one store; castord started from it."""

    def __init__(self, url: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="castor-flow-bench-"))
        (self.dir / "flowapp.py").write_text(APP)
        os.environ["FLOW_BENCH_URL"] = url
        self.env = {**os.environ, "PYTHONPATH": f"{self.dir}{os.pathsep}{REPO}"}
        self.env.pop("NOTIFY_SOCKET", None)
        sys.path.insert(0, str(self.dir))
        sys.modules.pop("flowapp", None)
        import flowapp  # noqa: PLC0415 - generated per run

        self.app: Any = flowapp

    def drain(self, name: str, n: int) -> float:
        """Queue n tasks of `name`, start castord, wait for the last: tasks/s."""
        getattr(self.app, name).map((i,) for i in range(n))
        manager = self.app.manager
        with open(self.dir / "castord.log", "ab") as log:
            started = time.perf_counter()
            proc = subprocess.Popen([CASTORD, "start", "flowapp:manager", "--workers", "0", "--threads", "8"],
                                    cwd=self.dir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                deadline = started + 600
                while (done := manager.count(name=name, status="success")) < n:
                    if manager.count(name=name, status="failed"):
                        raise RuntimeError(f"{name}: tasks failed")
                    if proc.poll() is not None or time.perf_counter() > deadline:
                        raise RuntimeError(f"{name}: {done}/{n} done, castord exit {proc.poll()}")
                    time.sleep(0.02)
                return n / (time.perf_counter() - started)
            finally:
                stop_by_pid(proc)

    def kept_rate(self, name: str) -> float:
        """Starts per second between the first and the last start the store recorded."""
        from castor.store import Query  # noqa: PLC0415 - after sys.path has the repo

        records = self.app.manager.store.list(Query(name=name), limit=None)
        starts = sorted(r.started_at for r in records if r.started_at is not None)
        return (len(starts) - 1) / (starts[-1] - starts[0])

    def close(self) -> None:
        self.app.manager.close()
        sys.path.remove(str(self.dir))
        sys.modules.pop("flowapp", None)
        shutil.rmtree(self.dir, ignore_errors=True)


def one_run(url: str, n: int) -> dict[str, float]:
    run = Run(url)
    try:
        figures = {"plain tasks/s": run.drain("plain", n),
                   "rate-limited, not binding: tasks/s": run.drain("loose", n),
                   "concurrency-limited, not binding: tasks/s": run.drain("capped", n),
                   f"rate-limited {BINDING_RATE}/s: tasks/s": run.drain("tight", max(2, n // 2))}
        figures[f"rate-limited {BINDING_RATE}/s: starts/s kept"] = run.kept_rate("tight")
        return figures
    finally:
        run.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=5_000)
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args()
    for store in args.stores.split(","):
        runs = []
        with locations(store, "flow") as fresh:
            for k in range(args.runs):
                figures = one_run(next(fresh), args.n)
                runs.append(figures)
                print(f"{store} run {k + 1}: " + "; ".join(f"{name} {v:,.0f}" for name, v in figures.items()),
                      flush=True)
        medians = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
        plain = medians["plain tasks/s"]
        print(f"\n{store}: medians of {args.runs}")
        for name, value in medians.items():
            print(f"  {name:40s} {value:10,.0f}   {value / plain:5.2f} x plain")
        print()


if __name__ == "__main__":
    main()
