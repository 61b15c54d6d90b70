"""`python -m castor APP`: run one worker engine in this process until SIGTERM/SIGINT.

This is the plain-script way to run tasks (and what the tests use to start
worker processes). Production deployments use castord, which supervises many.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time

from castor.app import AppLoadError, load_manager
from castor.errors import StoreError
from castor.periodic import Scheduler
from castor.worker import Worker


def _lease(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lease must be a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value < 1:
        # inf: a crashed worker's tasks would never run again; a tiny one: renewals spin.
        raise argparse.ArgumentTypeError(f"--lease must be a finite number of seconds, at least 1, not {text}")
    return value


def _whole(option: str):  # noqa: ANN202 - an argparse type
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a whole number, at least 1, not {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} must be a whole number, at least 1, not {text}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m castor", description=__doc__)
    parser.add_argument("app", help="module.path:variable naming a castor.Manager")
    parser.add_argument("--mode", choices=["process", "thread"], default="process")
    parser.add_argument("--threads", type=int, default=4, help="pool size for --mode thread")
    parser.add_argument("--queues", default=None, help="comma-separated queues to serve (default: all)")
    parser.add_argument("--lease", type=_lease, default=30.0, help="lease seconds (default 30)")
    parser.add_argument("--prefetch", type=_whole("--prefetch"), default=32,
                        help="most tasks claimed in one transaction while tasks are short (default 32)")
    parser.add_argument("--max-lost", type=_whole("--max-lost"), default=3,
                        help="a task whose worker was lost this many times fails with WorkerLost (default 3)")
    parser.add_argument("--no-periodic", action="store_true",
                        help="do not fire @manager.periodic schedules from this process")
    args = parser.parse_args(argv)
    try:
        manager = load_manager(args.app)
    except AppLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    queues = [q for q in (args.queues or "").split(",") if q] or None
    worker = Worker(manager, mode=args.mode, threads=args.threads, queues=queues, lease=args.lease,
                    prefetch=args.prefetch, max_lost=args.max_lost)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    failure: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except StoreError as exc:  # the database became unusable: say so, exit non-zero
            failure.append(exc)
            worker.stop()

    runner = threading.Thread(target=run, name="castor-worker")
    runner.start()
    # The main thread fires periodic schedules (each tick once, even if castords or
    # other workers fire them too) and stays free to take signals.
    scheduler = Scheduler(manager, now=time.time()) if manager.schedules and not args.no_periodic else None
    while runner.is_alive():
        wait = 0.2
        if scheduler is not None and not worker.stopping:
            scheduler.fire_due(time.time())
            deadline = scheduler.next_deadline()
            wait = min(wait, max(0.0, deadline - time.time())) if deadline is not None else wait
        runner.join(wait)
    # daemon=True tasks still running in pool threads go back to the queue now
    # (attempt not counted) instead of waiting for their leases to expire.
    if failure:
        print(f"error: {failure[0]}", file=sys.stderr)
        return 1
    worker.release_held()
    return 0


if __name__ == "__main__":
    sys.exit(main())
