"""expires= on a workflow member through the library API: a waiting member's seconds
count from its release (its predecessor may take longer than them), a datetime stays a
fixed instant, and the first step's count from the enqueue as for any task."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

import castor
from castor import Worker

FAR = datetime(2100, 1, 1, tzinfo=timezone.utc)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def app(manager: castor.Manager) -> castor.Manager:
    @manager.task(mode="thread", name="nap")
    def nap(value, seconds):
        time.sleep(seconds)
        return value

    @manager.task(mode="thread", name="double", expires=1)  # the task's own default: seconds too
    def double(value):
        return value * 2

    return manager


def test_a_link_runs_though_its_predecessor_took_longer_than_its_expiry(app: castor.Manager) -> None:
    nap, double = app.registry["nap"], app.registry["double"]
    workflow = castor.chain(nap.s(3, 1.5), double.s(), double.s().set(expires=1)).delay()
    first, second, third = workflow.tasks
    Worker(app, mode="thread").run(until_idle=True)
    assert workflow.join(timeout=5) == 12  # each link ran, though 1.5 s passed before the second started
    assert [t.info().started_at is not None for t in workflow.tasks] == [True, True, True]
    assert second.info().options.get("expires_after") is None  # turned into its deadline at the release
    # counted from the release (the first link's end); SQLite's JSON keeps 15 digits
    assert second.info().options["expires"] == pytest.approx(first.info().finished_at + 1, abs=1e-3)


def test_a_waiting_member_carries_its_seconds_until_its_release(app: castor.Manager) -> None:
    nap, double = app.registry["nap"], app.registry["double"]
    workflow = castor.chain(nap.s(3, 0), double.s(), double.s().set(expires=7)).delay()
    assert [t.info().options for t in workflow.tasks[1:]] == [{"expires_after": 1}, {"expires_after": 7}]


def test_a_datetime_expiry_on_a_member_stays_absolute(app: castor.Manager) -> None:
    nap, double = app.registry["nap"], app.registry["double"]
    workflow = castor.chain(nap.s(1, 0), double.s().set(expires=FAR)).delay()
    assert workflow.tasks[1].info().options == {"expires": FAR.timestamp()}


def test_the_first_step_counts_from_the_enqueue(app: castor.Manager) -> None:
    nap, double = app.registry["nap"], app.registry["double"]
    before = time.time()
    workflow = castor.chain(double.s(1), nap.s(0)).delay()
    options = workflow.tasks[0].info().options
    assert "expires_after" not in options and before + 1 <= options["expires"] <= time.time() + 1
