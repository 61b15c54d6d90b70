"""The short chaos run (the full one is scripts/chaos): load, random kills and
signals, then nothing lost and every duplicate explained by a kill.

It runs until a number of things happened (chaos actions, kills, tasks enqueued),
however long that takes on this machine, and fails if its deadline comes first: a
slow machine runs longer, never a smaller test."""

from __future__ import annotations

import pytest

from tests import chaos

GOAL = chaos.Goal(actions=8, kills=2, tasks=300, deadline=90)


@pytest.mark.timeout(360)  # the goal's deadline, then up to 120 s to settle and cleanup
def test_short_chaos_run_loses_nothing(tmp_path):
    lines: list[str] = []
    report = chaos.run(rate=30, interval=(0.4, 1.2), workdir=tmp_path, log=lines.append, goal=GOAL)
    print("\n".join(lines))  # the seed and the summary, shown if the test fails
    assert report.goal_missed is None, report.line()
    assert sum(report.actions.values()) >= GOAL.actions and report.kills >= GOAL.kills
    assert report.tasks >= GOAL.tasks
    assert report.lost == []
    assert report.unexplained == []


@pytest.mark.timeout(180)
def test_a_run_that_misses_its_goal_by_the_deadline_fails(tmp_path):
    lines: list[str] = []
    goal = chaos.Goal(actions=1000, kills=0, tasks=0, deadline=2)
    report = chaos.run(rate=30, interval=(0.4, 1.2), workdir=tmp_path, log=lines.append, goal=goal)
    assert report.goal_missed is not None and "actions" in report.goal_missed
    assert not report.ok and "GOAL MISSED" in lines[-1]
