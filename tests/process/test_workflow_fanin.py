"""A chord of 10,000 members settled by several real processes at once (design-workflows.md,
section 3): the callback is released once and runs once, every member counts once
(`remaining` reaches 0 exactly), and nothing is left waiting. On each store.

Four processes, each a castor.Worker with its own store, start together (a file barrier)
on one chord enqueued in one call.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

import castor
from castor.states import TaskStatus, WorkflowStatus
from tests.conftest import REPO, Processes, wait_until
from tests.fanin import define

MEMBERS = 10_000
PROCESSES = 4


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, db_path: str) -> str:
    if request.param == "sqlite":
        return db_path
    return str(request.getfixturevalue("postgres_db_url"))


@pytest.mark.timeout(300)
def test_ten_thousand_members_settled_by_several_processes_release_the_callback_once(url: str,
                                                                                       tmp_path: Path) -> None:
    manager = castor.Manager(url)
    try:
        member, callback = define(manager)
        runs = tmp_path / "callback-runs"
        procs = Processes(REPO)
        try:
            workers = [procs.start("-m", "tests.fanin", url, str(tmp_path), str(n)) for n in range(PROCESSES)]
            wait_until(lambda: all((tmp_path / f"ready-{n}").exists() for n in range(PROCESSES)), 60,
                       "the worker processes to start")
            workflow = castor.chord([member.s(i) for i in range(MEMBERS)], callback.s(str(runs))).delay()
            assert manager.counts()[TaskStatus.PENDING] == MEMBERS and manager.counts()[TaskStatus.WAITING] == 1
            (tmp_path / "go").write_text(workflow.id)
            outcome = workflow.join(timeout=240)
            for proc in workers:  # each stops once it sees the workflow ended
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
            outputs = [_output_of(proc) for proc in workers]  # stops any still running, by pid
            assert [proc.returncode for proc in workers] == [0] * PROCESSES, outputs
        finally:
            procs.stop_all()
        # Every process has stopped: nothing can run the callback again behind these checks.
        assert outcome["count"] == MEMBERS and outcome["in_order"]
        assert len(outcome["pids"]) >= 2  # members were settled by several processes
        assert len(runs.read_text().split()) == 1  # the callback ran once
        record = workflow.info()
        assert (record.state, record.step, record.remaining) == (WorkflowStatus.SUCCESS, 1, 0)
        cb = workflow.last.info()
        assert cb.status == TaskStatus.SUCCESS and cb.attempts == 1 and cb.lost == 0  # claimed once
        counts = manager.counts()
        assert counts[TaskStatus.SUCCESS] == MEMBERS + 1
        assert sum(n for status, n in counts.items() if status != TaskStatus.SUCCESS) == 0  # nothing waiting
        assert {t.info().attempts for t in workflow.steps[0][::500]} == {1}
    finally:
        manager.close()


def _output_of(proc: subprocess.Popen[bytes]) -> str:
    """What a worker process printed (it is stopped first, by its pid, if it still runs,
    after it printed every thread's stack: why it did not stop is then in the failure)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGUSR1)  # tests/fanin.py: faulthandler dumps, then goes on
        os.kill(proc.pid, signal.SIGTERM)  # delivered after: pending signals go lowest first
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.stdout.read().decode(errors="replace") if proc.stdout else ""
