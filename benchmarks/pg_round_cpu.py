"""Where a `delay().join()` round's CPU goes on PostgreSQL: every process's share, beside its latency.

    .venv/bin/python benchmarks/pg_round_cpu.py [--rounds 1000] [--runs 1]

On a 2-core machine a round is bound by the CPU all its processes spend between them (the
producer, castord's master and children, their server backends), not by any one step: a
step's cost is also the CPU it takes from the step that matters at that moment. So this
prints, per run, the round's p50 / p90 / p99 and each process's CPU per round (user +
system, from /proc/<pid>/stat, over the measured rounds only), castord's threads apart.

The set-up is benchmarks/compare_pg.py's latency workload: a throwaway server with fsync
on, `castord start` with 2 process children, 20 rounds to warm up, then one task at a time
with 2 ms between. Every process started is stopped by its pid (CastorBench.close).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_pg  # noqa: E402
from compare import process_tree  # noqa: E402

from tests.postgres import TestPostgres, ThrowawayServer  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
WARM_UP = 20


def cpu_seconds(stat_path: str) -> float:
    try:
        fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:60]
    except OSError:
        return "?"


def server_pids() -> list[int]:
    """The PostgreSQL processes on this machine (the throwaway server's: nothing else runs one here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and command(int(entry.name)).startswith("postgres"):
            found.append(int(entry.name))
    return found


def threads(pid: int) -> dict[int, str]:
    """A process's threads: tid -> where its CPU is read from."""
    return {int(t.name): f"{t}/stat" for t in Path(f"/proc/{pid}/task").glob("*")}


def one_run(pg: TestPostgres, rounds: int) -> tuple[list[float], dict[str, float]]:
    with pg.database() as url:
        bench = compare_pg.CastorBench(url)
        try:
            bench.spawn(*compare_pg.CASTOR_SETUPS["2 process workers"][0])
            for i in range(WARM_UP):
                assert bench.app.noop.delay(i).join(timeout=60) == i
            assert bench.daemon is not None
            castord = process_tree(bench.daemon.pid)
            watched = {f"{pid} {command(pid)}": f"/proc/{pid}/stat" for pid in [os.getpid(), *server_pids()]}
            for pid in castord:
                for tid, path in threads(pid).items():
                    watched[f"{pid}/{tid} {command(pid)}"] = path
            before = {name: cpu_seconds(path) for name, path in watched.items()}
            times = []
            for i in range(rounds):
                start = time.perf_counter()
                assert bench.app.noop.delay(i).join(timeout=60) == i
                times.append((time.perf_counter() - start) * 1000)
                time.sleep(0.002)
            after = {name: cpu_seconds(path) for name, path in watched.items()}
        finally:
            bench.close()
    return times, {name: (after[name] - before[name]) / rounds * 1000 for name in watched}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    if args.rounds < 100:
        parser.error("--rounds must be at least 100 (CPU is counted in clock ticks of 10 ms)")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    with ThrowawayServer(fsync=True) as server:
        pg = TestPostgres(server.url(), server)
        for run in range(1, args.runs + 1):
            times, cpu = one_run(pg, args.rounds)
            times.sort()
            q = statistics.quantiles(times, n=100)
            print(f"run {run}: p50 {statistics.median(times):.2f} ms, p90 {q[89]:.2f}, p99 {q[98]:.2f}; "
                  f"CPU per round, ms ({sum(cpu.values()):.2f} in all):")
            for name, ms in sorted(cpu.items(), key=lambda item: -item[1]):
                if ms >= 0.005:
                    print(f"  {ms:7.3f}  {name}")


if __name__ == "__main__":
    main()
