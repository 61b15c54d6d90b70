"""A finished task's outcome is written at once, whoever is idle.

The fault (issue 12): in a thread pool, the claimer sleeps until the database
changes, while a finished task's settlement sat in its in-memory queue until the
claimer's periodic re-check (0.5 s): `join()` on a thread task through an idle
worker took up to half a second. These tests make that re-check an hour long, so
that an outcome left for it would never arrive within the test's deadline; they
assert what happens, not how fast.
"""

from __future__ import annotations

import threading
import time

import pytest

from castor import worker as worker_module
from castor.worker import Worker

pytestmark = pytest.mark.timeout(60)

HOUR = 3600.0


@pytest.mark.parametrize("mode,threads", [("thread", 4), ("thread", 1), ("process", 1)])
def test_an_idle_workers_task_answers_without_waiting_for_a_recheck(manager, monkeypatch, mode, threads):
    monkeypatch.setattr(worker_module, "IDLE_RECHECK_SECONDS", HOUR)

    @manager.task(mode=mode)
    def echo(i):
        # Finish after the claimer, having found nothing more to claim, went to sleep
        # (if this machine is slower than that, the test only checks less).
        time.sleep(0.2)
        return i

    worker = Worker(manager, mode=mode, threads=threads, lease=HOUR)  # no renewal wakes it either
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    try:
        for i in range(5):  # each one arrives while the worker sleeps, idle
            assert echo.delay(i).join(timeout=20) == i
    finally:
        worker.stop()
        echo.delay(-1)  # a change wakes the sleeping claimer, which then sees stop()
        runner.join(30)
    assert not runner.is_alive()
