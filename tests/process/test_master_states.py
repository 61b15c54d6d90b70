"""The master's states (running, reloading, draining, stopping) under real signals.

Every signal is defined in every state: whatever arrives, and in whatever order,
castord stops within its graceful timeout, leaves no process behind and loses no
task. The randomized test prints its seed; CASTORD_SIGNAL_SEED=N replays one.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.process.leftovers import in_groups, in_session
from tests.process.test_castord import daemons  # noqa: F401 - fixture

FLOWAPP = '''
import os, time
from testapp import manager

def _started(directory, n):
    # One line per attempt, naming the process that ran it.
    with open(os.path.join(directory, str(n)), "a") as f:
        f.write(f"{os.getpid()}\\n")

@manager.task(mode="process", name="pwork", daemon=False)
def pwork(directory, n, seconds):
    _started(directory, n)
    time.sleep(seconds)
    return n

@manager.task(mode="process", name="pwork_daemon", daemon=True)
def pwork_daemon(directory, n, seconds):
    _started(directory, n)
    time.sleep(seconds)
    return n

@manager.task(mode="thread", name="twork", daemon=False)
def twork(directory, n, seconds):
    _started(directory, n)
    time.sleep(seconds)
    return n

def _wait_for(gate):
    while not os.path.exists(gate):
        time.sleep(0.01)

@manager.task(mode="process", name="pgated", daemon=False)
def pgated(directory, n, gate):
    _started(directory, n)
    _wait_for(gate)
    return n

@manager.task(mode="thread", name="tgated", daemon=False)
def tgated(directory, n, gate):
    _started(directory, n)
    _wait_for(gate)
    return n

@manager.task(mode="thread", name="twork_daemon", daemon=True)
def twork_daemon(directory, n, seconds):
    _started(directory, n)
    time.sleep(seconds)
    return n
'''


@pytest.fixture
def flow(app_dir: Path):
    (app_dir / "flowapp.py").write_text(textwrap.dedent(FLOWAPP))
    (app_dir / "starts").mkdir()
    sys.modules.pop("flowapp", None)
    import flowapp

    yield flowapp
    sys.modules.pop("flowapp", None)


def enqueue(flow, directory: Path, first: int, count: int, rng: random.Random) -> list:
    kinds = [flow.pwork, flow.pwork_daemon, flow.twork, flow.twork_daemon]
    return [rng.choice(kinds).delay(str(directory), n, rng.choice([0.005, 0.02, 0.1]))
            for n in range(first, first + count)]


def start_pids(directory: Path) -> set[int]:
    pids: set[int] = set()
    for path in directory.iterdir():
        pids.update(int(x) for x in path.read_text().split())
    return pids


def spawned_before_and_after(events: list[dict], marker: str) -> tuple[set[int], list[dict]]:
    """Children spawned before the first `marker` event, and child.spawned lines after it."""
    before: set[int] = set()
    after: list[dict] = []
    seen = False
    for e in events:
        if e["event"] == marker and e["role"] == "master":
            seen = True
        elif e["event"] == "child.spawned":
            (after.append(e) if seen else before.add(e["child_pid"]))
    return before, after


def assert_nothing_left(d, what: str) -> None:
    """No live process of castord's session (master, fork server, children, their
    children), nor in the process group of any child it logged."""
    children = {e["child_pid"] for e in d.events("child.spawned")}
    deadline = time.monotonic() + 10
    while (left := in_session(d.pid) + in_groups(children, d.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"{what}: left behind: {left}"


def assert_lost_nothing(tasks: list, daemons, what: str) -> None:  # noqa: F811
    """Each task is finished or waiting (never left 'running'); a second castord runs the rest."""
    statuses = {t.id: t.status() for t in tasks}
    assert set(statuses.values()) <= {"success", "pending"}, f"{what}: {statuses}"
    d2 = daemons("castord2").start("--workers", "2", "--threads", "2", app="flowapp:manager")
    assert [t.join(timeout=30) for t in tasks] == list(range(len(tasks)))  # task n returns n
    assert {t.status() for t in tasks} == {"success"}
    d2.signal(signal.SIGTERM)
    assert d2.wait_exit(30) == 0


@pytest.mark.timeout(60)
def test_ttin_during_a_drain_is_refused_and_castord_stops(daemons, app_dir, flow):  # noqa: F811
    """TERM, then TTIN 50 ms later, under load: no child is spawned once the drain
    began (one was, and it was never told to drain: castord never exited)."""
    starts, gate = app_dir / "starts", app_dir / "gate"
    # Critical tasks that run until the gate opens: the drain cannot end before the TTIN.
    tasks = [(flow.pgated if n % 2 else flow.tgated).delay(str(starts), n, str(gate)) for n in range(400)]
    # No graceful timeout: its deadline would kill a stray child and hide the fault.
    d = daemons().start("--workers", "2", "--threads", "2", app="flowapp:manager")
    d.wait_note("READY=1")
    wait_until(lambda: len(list(starts.iterdir())) >= 4, 20, "every slot to run a task")
    d.signal(signal.SIGTERM)
    time.sleep(0.05)
    d.signal(signal.SIGTTIN)
    d.wait_event("castord.signal", signal="SIGTTIN")
    gate.touch()
    assert d.wait_exit(30) == 0
    refused = d.wait_event("castord.resize_refused")[0]
    assert refused["state"] == "draining" and refused["signal"] == "SIGTTIN"
    before, after = spawned_before_and_after(d.events(), "castord.draining")
    assert after == [], "a child was spawned after the drain began"
    assert start_pids(starts) <= before, "a task ran in a child started after the drain began"
    assert_nothing_left(d, "after the drain")
    assert_lost_nothing(tasks, daemons, "after the drain")


SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
           signal.SIGUSR1]
WEIGHTS = [1, 1, 1, 3, 3, 3, 2]  # stops end a sequence, so the rest come more often
GRACEFUL_TIMEOUT = 4.0
SLACK = 15.0  # killing, reaping and requeueing after the deadline, on a busy machine
BASE_SEED = int(os.environ.get("CASTORD_SIGNAL_SEED", random.randrange(2**32)))


@pytest.mark.timeout(59)
@pytest.mark.parametrize("run", range(3))
def test_random_signal_sequences_stop_cleanly_and_lose_nothing(daemons, app_dir, flow, run):  # noqa: F811
    seed = BASE_SEED + run
    print(f"CASTORD_SIGNAL_SEED={seed}")
    rng = random.Random(seed)
    steps = [(rng.choices(SIGNALS, WEIGHTS)[0], rng.uniform(0, 0.3)) for _ in range(rng.randint(3, 10))]
    sequence = " ".join(f"{s.name}+{delay:.2f}" for s, delay in steps)
    what = f"seed {seed}: {sequence}"
    print(what)
    starts = app_dir / "starts"
    tasks = enqueue(flow, starts, 0, 150, rng)
    d = daemons().start("--workers", "2", "--threads", "2", "--graceful-timeout", str(GRACEFUL_TIMEOUT),
                        "--heartbeat-interval", "0.2", "--heartbeat-timeout", "10", app="flowapp:manager")
    d.wait_note("READY=1")
    wait_until(lambda: any(starts.iterdir()), 20, "tasks to flow")
    for signum, delay in steps:
        tasks += enqueue(flow, starts, len(tasks), 10, rng)  # tasks keep flowing
        time.sleep(delay)
        d.signal(signum)  # a zombie master (exited, not yet waited for) takes it silently
    d.signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    assert d.wait_exit(GRACEFUL_TIMEOUT + SLACK) == 0, what
    assert time.monotonic() - stopped_at < GRACEFUL_TIMEOUT + SLACK, what
    events = d.events()
    first_stop = next((e["event"] for e in events if e["role"] == "master"
                       and e["event"] in ("castord.draining", "castord.stopping")), None)
    assert first_stop is not None, what
    _before, after = spawned_before_and_after(events, first_stop)
    assert after == [], f"{what}: children spawned once stopping began: {after}"
    crashed = [e for e in events if e["event"] == "child.exited" and not e["expected"]]
    assert crashed == [], f"{what}: signals to the master made children crash: {crashed}"
    assert d.events("castord.stopped"), what
    assert_nothing_left(d, what)
    assert_lost_nothing(tasks, daemons, what)


@pytest.mark.timeout(60)
def test_hup_during_a_reload_waits_for_it_and_term_drains_both_generations(daemons, app_dir, flow):  # noqa: F811
    starts = app_dir / "starts"
    first_gate, second_gate = app_dir / "gate1", app_dir / "gate2"
    d = daemons().start("--workers", "1", "--threads", "0", app="flowapp:manager")
    d.wait_note("READY=1")
    held = flow.pgated.delay(str(starts), 0, str(first_gate))
    wait_until(lambda: start_pids(starts), 20, "the first generation to run a task")
    d.signal(signal.SIGHUP)
    d.wait_event("castord.reloading", generation=2)
    d.signal(signal.SIGHUP)  # the old generation still drains: this one waits for it
    deferred = d.wait_event("castord.reload_deferred")[0]
    assert deferred["state"] == "reloading" and len(d.events("castord.reloading")) == 1
    first_gate.touch()
    assert held.join(timeout=20) == 0
    d.wait_event("castord.reloaded", generation=2)
    d.wait_event("castord.reloading", generation=3)  # the deferred one
    d.wait_event("castord.reloaded", generation=3)
    # Now a reload with a critical task in the old generation, and a TERM during it.
    held = flow.pgated.delay(str(starts), 1, str(second_gate))
    wait_until(lambda: len(list(starts.iterdir())) == 2, 20, "the third generation to run a task")
    d.signal(signal.SIGHUP)
    d.wait_event("castord.reloading", generation=4)
    d.wait_event("child.ready", count=4)
    d.signal(signal.SIGTERM)
    d.wait_event("castord.draining")
    d.signal(signal.SIGHUP)
    assert d.wait_event("castord.reload_refused")[0]["state"] == "draining"
    second_gate.touch()
    assert d.wait_exit(30) == 0
    assert held.status() == "success"
    _before, after = spawned_before_and_after(d.events(), "castord.draining")
    assert after == []
    exits = d.events("child.exited")
    assert {e["child_pid"] for e in exits} == {e["child_pid"] for e in d.events("child.spawned")}
    assert all(e["expected"] for e in exits) and not d.events("castord.graceful_timeout")
    assert_nothing_left(d, "after a drain during a reload")


@pytest.mark.timeout(60)
def test_a_term_sent_to_one_child_drains_just_that_child(daemons, app_dir, flow):  # noqa: F811
    # Its handler only records now; the heartbeat thread drains (it used to act in
    # the handler, which could interrupt a send on the pipe under its lock).
    starts, gate = app_dir / "starts", app_dir / "gate"
    d = daemons().start("--workers", "1", "--threads", "0", app="flowapp:manager")
    d.wait_note("READY=1")
    task = flow.pgated.delay(str(starts), 0, str(gate))
    victim = wait_until(lambda: start_pids(starts), 20, "the task to start").pop()  # type: ignore[attr-defined]
    os.kill(victim, signal.SIGTERM)
    gate.touch()  # a critical task: it finishes first
    assert task.join(timeout=20) == 0
    exited = d.wait_event("child.exited", child_pid=victim)[0]
    assert exited["expected"] is True and exited["reason"] == "drained"
    d.wait_event("child.spawned", count=2)  # replaced: castord itself runs on
    assert flow.pwork.delay(str(starts), 1, 0).join(timeout=20) == 1
    # A daemon task: the child leaves at once, the task is requeued and runs again.
    flow.pwork_daemon.delay(str(starts), 2, 60)
    runs = starts / "2"
    victim = wait_until(lambda: runs.exists() and runs.read_text().split(), 20, "the daemon task to start")
    os.kill(int(victim[0]), signal.SIGTERM)  # type: ignore[index]
    exited = d.wait_event("child.exited", child_pid=int(victim[0]))[0]  # type: ignore[index]
    assert exited["expected"] is True and exited["reason"] == "drained (daemon task stopped)"
    wait_until(lambda: len(runs.read_text().split()) == 2, 20, "the replacement to run it again")
    assert d.proc.poll() is None
