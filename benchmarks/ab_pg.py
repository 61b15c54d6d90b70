"""Two castor trees by turns on one PostgreSQL: paired ratios of compare_pg.py's castor side.

    git worktree add /tmp/castor-base <commit>          # the tree to compare against
    .venv/bin/python benchmarks/ab_pg.py /tmp/castor-base [--pairs 4] [--only drain,latency] [--producer-too]

On a shared machine the same run's figures move ±30 % from one minute to the next, so a
change is judged here by pairs: each pair runs a workload with castord imported from
this checkout (A) and from the other tree (B), back to back, on one throwaway server, in
alternating order; the figure is B's value over A's per pair and their median. The producer
side (the enqueue, the join) is this checkout's: what differs is the castord and the store
code its processes import (PYTHONPATH puts the tree first). With --producer-too, the
producer is each tree's as well: the workload runs in a process of its own that imports
castor, and that tree's benchmarks/compare_pg.py, from the tree (a change to `.delay()` or
`join()` shows only so).

Workloads: compare_pg.py's castor drain (both setups; tasks/s, higher is better) and
latency (p50/p90/p99 ms, lower is better): read B/A by the figure's sense. Both trees must
speak the database's schema version (this checkout's migrations make it).
Every process started is stopped by its pid (compare_pg.py's CastorBench.close).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_pg  # noqa: E402
from installed import compile_castor  # noqa: E402

from tests.postgres import TestPostgres, ThrowawayServer  # noqa: E402

WORKLOADS = ("drain", "latency")


# Run in a process of its own by --producer-too: the workload, with castor, castord and
# compare_pg imported from the tree named first on its PYTHONPATH; its figures as JSON.
WHOLE = """
import json, sys
from pathlib import Path
tree = Path(sys.argv[1])
sys.path[:0] = [str(tree), str(tree / "benchmarks")]
import castor, compare_pg
from tests.postgres import TestPostgres
assert Path(castor.__file__).resolve().is_relative_to(tree.resolve()), castor.__file__
compare_pg.CASTORD_TREE = tree
pg = TestPostgres(sys.argv[2], None)
n = int(sys.argv[4])
if sys.argv[3] == "latency":
    out = compare_pg.castor_latency(pg, n)
else:
    out = {}
    for setup in compare_pg.CASTOR_SETUPS:
        out.update(compare_pg.castor_drain(pg, n, setup))
print(json.dumps(out))
"""


def whole(pg: TestPostgres, workload: str, tree: Path, args: argparse.Namespace) -> dict[str, float]:
    n = args.latency_n if workload == "latency" else args.drain_n
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", WHOLE, str(tree), pg.url, workload, str(n)], env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"the {workload} run with {tree} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def one(pg: TestPostgres, workload: str, tree: Path, args: argparse.Namespace) -> dict[str, float]:
    if args.producer_too:
        return whole(pg, workload, tree, args)
    compare_pg.CASTORD_TREE = tree
    try:
        if workload == "latency":
            return compare_pg.castor_latency(pg, args.latency_n)
        out: dict[str, float] = {}
        for setup in compare_pg.CASTOR_SETUPS:
            out.update(compare_pg.castor_drain(pg, args.drain_n, setup))
        return out
    finally:
        compare_pg.CASTORD_TREE = compare_pg.REPO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other castor tree (B), e.g. a git worktree")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--only", default=",".join(WORKLOADS))
    parser.add_argument("--drain-n", type=int, default=10_000)
    parser.add_argument("--latency-n", type=int, default=300)
    parser.add_argument("--producer-too", action="store_true",
                        help="the producer (enqueue, join) from each tree too, in a process of its own")
    args = parser.parse_args()
    only = [w for w in args.only.split(",") if w]
    if unknown := set(only) - set(WORKLOADS):
        parser.error(f"--only: unknown workload(s) {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}")
    if not (args.other / "castor" / "__init__.py").is_file() or not (args.other / "castord").is_dir():
        parser.error(f"{args.other} is not a castor tree (no castor/ and castord/ in it)")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    here = compare_pg.REPO
    compile_castor()  # this checkout's bytecode, and the other's: start-up must not differ by it
    for package in ("castor", "castord"):
        if not compileall.compile_dir(args.other / package, quiet=1):
            raise SystemExit(f"compiling {args.other / package} failed: see above")
    server = ThrowawayServer(fsync=True)
    server.start()
    try:
        pg = TestPostgres(server.url(), server)
        ratios: dict[str, list[float]] = defaultdict(list)
        values: dict[str, dict[str, list[float]]] = {"A": defaultdict(list), "B": defaultdict(list)}
        for pair in range(args.pairs):
            for workload in only:
                order = [("A", here), ("B", args.other)]
                if pair % 2:
                    order.reverse()
                got = {label: one(pg, workload, tree, args) for label, tree in order}
                for figure, a in got["A"].items():
                    b = got["B"][figure]
                    values["A"][figure].append(a)
                    values["B"][figure].append(b)
                    if a:  # a zero figure (none measured) has no ratio
                        ratios[figure].append(b / a)
                print(f"pair {pair + 1}, {workload}: " + "; ".join(
                    f"{f}: A {got['A'][f]:,.2f} B {got['B'][f]:,.2f}" for f in got["A"]), flush=True)
        print(f"\nA = {here}, B = {args.other}; medians of {args.pairs} pairs")
        print(f"{'figure':55s} {'A':>12s} {'B':>12s} {'B/A':>8s}  (B/A per pair)")
        for figure, rs in ratios.items():
            if not rs:
                continue
            print(f"{figure:55s} {statistics.median(values['A'][figure]):12,.2f} "
                  f"{statistics.median(values['B'][figure]):12,.2f} {statistics.median(rs):8.3f}  "
                  f"({' '.join(f'{r:.2f}' for r in rs)})")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
