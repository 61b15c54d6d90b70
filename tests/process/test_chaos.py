"""The short chaos run (the full one is scripts/chaos): load, random kills, stalls
past the lease, clock steps, signal bursts, tasks that fork or kill their own worker,
a producer that forks while it writes; then nothing lost, every duplicate explained.

It runs until a number of things happened (chaos actions, kills, tasks enqueued, a
few of each new kind of disruption), however long that takes on this machine, and
fails if its deadline comes first: a slow machine runs longer, never a smaller test."""

from __future__ import annotations

import pytest

from tests import chaos

GOAL = chaos.Goal(actions=12, kills=3, tasks=300, deadline=110, kinds=(
    ("stall_master_child", 1), ("stall_group", 1), ("clock_step", 2), ("signal_burst", 2),
    ("exit_process", 2), ("exit_thread", 2), ("fork_task", 2), ("producer_fork", 3)))


@pytest.mark.timeout(420)  # the goal's deadline, up to 200 s to settle, and cleanup
def test_short_chaos_run_loses_nothing(tmp_path):
    lines: list[str] = []
    report = chaos.run(rate=30, interval=(0.4, 1.2), workdir=tmp_path, log=lines.append, goal=GOAL, settle_cap=200)
    print("\n".join(lines))  # the seed, the problems with their evidence, the summary
    assert report.goal_missed is None, report.line()
    assert sum(report.actions.values()) >= GOAL.actions and report.kills >= GOAL.kills
    assert report.tasks >= GOAL.tasks
    assert report.lost == []
    assert report.unexplained == []
    assert report.faults == []


@pytest.mark.timeout(180)
def test_a_run_that_misses_its_goal_by_the_deadline_fails(tmp_path):
    lines: list[str] = []
    goal = chaos.Goal(actions=1000, kills=0, tasks=0, deadline=2)
    report = chaos.run(rate=30, interval=(0.4, 1.2), workdir=tmp_path, log=lines.append, goal=goal)
    assert report.goal_missed is not None and "actions" in report.goal_missed
    assert not report.ok and any(line.startswith("chaos: GOAL MISSED") for line in lines)
