"""Soak: a million no-op tasks through castord with a result TTL.

    .venv/bin/python benchmarks/soak.py [--tasks 1000000] [--backlog 50000] [--ttl 5]

A producer keeps about --backlog tasks pending (half process, half thread tasks)
while castord (2 process children, 4 threads) drains them; successes expire after
--ttl seconds, so the table stays small. For each 100,000 tasks finished it prints
the throughput over that stretch, the resident memory of the master and of the
largest child, and the size of the database file and its WAL: all of them should
stay flat. Exits 1 if a task failed or any is left unfinished.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_castord import Daemon  # noqa: E402
from bench_core import Bench  # noqa: E402
from procfs import rss_mb  # noqa: E402

SOAK_APP = textwrap.dedent('''
    import os
    import castor

    manager = castor.Manager(os.environ["CASTOR_BENCH_DB"], result_ttl={ttl})

    @manager.task(mode="process", name="noop")
    def noop(i):
        return i

    @manager.task(mode="thread", name="tnoop")
    def tnoop(i):
        return i
''')
STEP = 100_000
BATCH = 10_000


def size_mb(path: str) -> float:
    try:
        return os.path.getsize(path) / (1 << 20)
    except OSError:
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--backlog", type=int, default=50_000)
    parser.add_argument("--ttl", type=float, default=5.0)
    args = parser.parse_args()

    b = Bench()
    try:
        (b.dir / "soakapp.py").write_text(SOAK_APP.format(ttl=args.ttl))
        sys.modules.pop("soakapp", None)
        import soakapp  # noqa: PLC0415 - generated per run

        # The daemon must load the soak app, not the default bench app.
        (b.dir / "benchapp.py").write_text("from soakapp import manager, noop, tnoop\n")
        d = Daemon(b, "--workers", "2", "--threads", "4")
        d.wait_ready()
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; {args.tasks:,} tasks, "
              f"backlog {args.backlog:,}, result_ttl {args.ttl:g} s; master pid {d.proc.pid}")
        print(f"{'finished':>10} {'tasks/s':>8} {'master MB':>10} {'db MB':>7} {'wal MB':>7} {'rows':>8}  "
              "every other process under the master, MB (by pid)")
        enqueued = 0
        step_start, next_step = time.perf_counter(), STEP
        rates: list[float] = []
        child_range: dict[int, tuple[float, float]] = {}  # pid -> lowest, highest RSS seen
        while True:
            unfinished = b.query(
                "SELECT count(*) FROM castor_tasks WHERE status IN ('pending', 'running')")[0][0]
            finished = enqueued - unfinished
            if enqueued < args.tasks and unfinished < args.backlog:
                n = min(BATCH, args.tasks - enqueued)
                fns = (soakapp.noop, soakapp.tnoop)
                for fn in fns:
                    fn.map([(enqueued + i,) for i in range(n // 2)])
                enqueued += (n // 2) * 2
                continue
            if finished >= next_step or (enqueued >= args.tasks and unfinished == 0):
                now = time.perf_counter()
                rate = (finished - (next_step - STEP)) / (now - step_start)
                children = sorted(p for p in d.descendants() if p != d.proc.pid)
                sizes = {p: rss_mb(p) for p in children}
                rows = b.query("SELECT count(*) FROM castor_tasks")[0][0]
                print(f"{finished:>10,} {rate:>8,.0f} {rss_mb(d.proc.pid):>10.1f} {size_mb(b.db):>7.1f} "
                      f"{size_mb(b.db + '-wal'):>7.1f} {rows:>8,}  "
                      + " ".join(f"{p}:{mb:.1f}" for p, mb in sizes.items()), flush=True)
                rates.append(rate)
                for pid, mb in sizes.items():
                    low, high = child_range.get(pid, (mb, mb))
                    child_range[pid] = (min(low, mb), max(high, mb))
                step_start, next_step = now, next_step + STEP
                if unfinished == 0 and enqueued >= args.tasks:
                    break
            time.sleep(0.2)
        failed = b.query("SELECT count(*) FROM castor_tasks WHERE status != 'success'")[0][0]
        d.stop()
        growth = max(high - low for low, high in child_range.values())
        print(f"throughput per 100k: min {min(rates):,.0f}, max {max(rates):,.0f} tasks/s; "
              f"largest RSS change of any child: {growth:.1f} MB; unfinished or failed: {failed}")
        sys.exit(1 if failed else 0)
    finally:
        soak = sys.modules.pop("soakapp", None)
        if soak is not None:
            soak.manager.close()
        b.close()


if __name__ == "__main__":
    main()
