"""How a beaver-db application's own writes fare while castor works in the same file.

    .venv/bin/python benchmarks/bench_beside_beaver.py [--runs 3] [--seconds 5]

Measures one process writing beaver dict entries (set + get per op) for --seconds:
alone; while 2 castor workers drain a backlog flat out; and while castor handles a steady
200 tasks/s. Prints ops/s (median of --runs) and any errors seen (there must be none).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import Bench  # noqa: E402


def beaver_ops(db_path: str, seconds: float) -> tuple[float, int]:
    from beaver import BeaverDB

    db = BeaverDB(db_path)
    d = db.dict("app_state")
    ops = errors = 0
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    while time.monotonic() < deadline:
        try:
            d[f"k{ops % 100}"] = {"n": ops}
            d[f"k{ops % 100}"]
            ops += 1
        except Exception:  # noqa: BLE001 - counted and reported
            errors += 1
    elapsed = time.monotonic() - start
    db.close()
    return ops / elapsed, errors


def run(scenario: str, seconds: float) -> tuple[float, int]:
    b = Bench()
    try:
        if scenario == "drain":
            b.app.noop.map([(i,) for i in range(200_000)])
            b.worker("--mode", "process")
            b.worker("--mode", "process")
            b.app.noop.delay(-1)
            time.sleep(1.0)  # workers up and draining
        elif scenario == "steady":
            b.worker("--mode", "process")
            stop = threading.Event()

            def produce() -> None:
                while not stop.is_set():
                    b.app.noop.delay(0)
                    time.sleep(0.005)  # ~200 tasks/s

            producer = threading.Thread(target=produce)
            producer.start()
            time.sleep(1.0)
        result = beaver_ops(b.db, seconds)
        if scenario == "steady":
            stop.set()
            producer.join()
        return result
    finally:
        b.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(f"beaver dict set+get ops/s, one process, median of {args.runs} runs of {args.seconds:g} s")
    for scenario, label in [("alone", "alone"), ("steady", "castor at ~200 tasks/s"),
                            ("drain", "castor draining flat out (2 workers)")]:
        results = [run(scenario, args.seconds) for _ in range(args.runs)]
        ops = statistics.median(r[0] for r in results)
        errors = sum(r[1] for r in results)
        print(f"{label:40s} {ops:8.0f} ops/s   errors: {errors}   runs: {[round(r[0]) for r in results]}")


if __name__ == "__main__":
    main()
