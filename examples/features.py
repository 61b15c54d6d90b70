"""The task semantics of docs/tasks.md in one runnable script.

    .venv/bin/python -m examples.features [path/to/file.db]

A Worker runs in this process (castord would run the same engine in its
children); each section prints what it shows. tests/integration/test_examples.py
runs it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from datetime import timedelta

import castor

path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.mkdtemp(), "features.db")
manager = castor.Manager(path, result_ttl=timedelta(days=7))
attempts_seen: list[int] = []


@manager.task(mode="thread", retries=3, retry_delay=0.05, retry_on=(ConnectionError,))
def flaky_fetch(url: str) -> str:
    attempts_seen.append(1)
    if len(attempts_seen) < 3:
        raise ConnectionError(f"{url} did not answer")
    return f"200 from {url}"


@manager.task(mode="thread")
def long_crawl(pages: int) -> str:
    for page in range(pages):
        if castor.cancelled():
            return f"stopped at page {page}"
        castor.progress((page + 1) / pages, f"page {page + 1} of {pages}")
        time.sleep(0.01)
    return "crawled everything"


@manager.task(mode="thread", unique=True)
def sync_account(account_id: int) -> int:
    return account_id


@manager.task(mode="thread", cache_ttl=600)
def quote(symbol: str) -> float:
    return 42.0


@manager.task(mode="thread", validate=True, result_ttl=0)
def resize(width: int, height: int) -> str:
    return f"{width}x{height}"


@manager.task(mode="thread")
def broken() -> None:
    raise ValueError("bad input")


def main() -> None:
    worker = castor.Worker(manager, mode="thread", threads=4)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    try:
        # Retries: two ConnectionErrors, then a success on attempt 3.
        task = flaky_fetch.delay("https://example.com")
        print("retries:", task.join(timeout=10), "after", task.attempts, "attempts;",
              [h["type"] for h in task.history])

        # Progress, then cancellation of a running task.
        crawl = long_crawl.delay(10_000)
        while crawl.progress is None:
            time.sleep(0.01)
        print("progress:", crawl.progress.message)
        crawl.cancel()
        try:
            crawl.join(timeout=10)
        except castor.TaskCancelled:
            print("cancel:", crawl.status())

        # Unique: a pending twin is returned instead of a duplicate (due in 0.5 s, so that
        # the worker cannot have finished the first before the second is asked for).
        first = sync_account.apply_async((7,), countdown=0.5)
        second = sync_account.apply_async((7,), countdown=0.5)
        print("unique: same task" if first == second else "unique: BROKEN", first.join(timeout=10))

        # Caching: a recent success answers without running again.
        q1 = quote.delay("ACME")
        q1.join(timeout=10)
        print("cache: same task" if quote.delay("ACME") == q1 else "cache: BROKEN")

        # Validation: bad arguments never reach the database.
        try:
            resize.delay("wide", 10)
        except castor.InvalidArguments as exc:
            print("validation:", exc)

        # Failed tasks: inspect, then retry.
        failed = broken.delay()
        try:
            failed.join(timeout=10)
        except ValueError as exc:
            print("failed:", repr(exc), "listed:", failed in manager.failed(name=broken.name))
        failed.retry()
        print("retried:", failed.status() in ("pending", "running", "failed"))

        # Purge: finished tasks go, pending ones stay.
        print("purged:", manager.purge(status="success"), "successes")
    finally:
        worker.stop()
        runner.join(10)
        manager.close()


if __name__ == "__main__":
    main()
