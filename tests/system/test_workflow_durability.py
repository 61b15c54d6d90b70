"""The workflow durability test (docs/design-workflows.md, section 8; issue 16): workflows
through real castords while their processes are SIGKILLed at random, then every
workflow must end as designed, nothing must have run twice without a kill to explain
it, no follow-up may have run before the step it follows had ended, and nothing may be
left behind.

Per store: SQLite with one castord of 3 process children and a thread host (4 threads);
PostgreSQL with two castords on one database (2 process children and 3 threads each).

The load, the section's sizes: 20 chains of 50 links (link i returns its input + i;
links alternate between process and thread tasks), 10 chords of 500 members (process
and thread members; the callback returns (len, sum)); a chain of 10 whose link 4 fails
for good and a chord of 100 whose member 37 fails for good (decided by their arguments;
no task has retries); and a chord with a thread task and a process task among its
members that run until the test cancels the chord. Every task, each time it starts and
just before it returns, appends a line to a side-effect log of the test's own
(tests/workflow_chaos_app.py): the task's id, the fence of its claim and its process;
the lines' order in that one file orders the runs without comparing clocks.

The chaos (tests/durability.py), seeded (the seed is printed; CASTOR_DURABILITY_SEED
replays one): every 0.3-1.2 s, SIGKILL a random worker child (process child or thread
host, found in its castord's session) or, one kill in four, a castord master, started
again at once. It runs until every workflow has ended and at least MIN_KILLS kills were
made, masters and children both. Waits, not timing, make the kills land in the load:
link 25 of every chain waits until GATE_KILLS kills were made, and the held chord is
cancelled only after MIN_KILLS.

castord starts with `--max-lost 1000`, so that no kill turns into WorkerLost (that case has
its own contract tests).

It asserts, section 8's list: (1) every workflow's end state and result, the failing
chord's ChordFailed naming exactly its failing member, the failing chain raising its
link's exception with the later links cancelled (WorkflowStopped), the cancelled chord
cancelled with no member left pending, waiting or running; (2) per task, its runs are at
most its attempts, no two runs share a fence, every run but the last has a lost
attempt in the task's history, a success's result comes from its last claim, and a
follow-up's first run starts after every end of the step before it; a member cancelled
before its step came never ran (one of the first step, whose step came at once, only in
attempts a kill took); each callback got its members' results in order; (3)
no task left waiting, pending or running, no WorkerLost, and no castord logged
`workflow.advance_missed`.

Found by it, and fixed: on PostgreSQL a cancel that raced the release of a running member
could leave the member pending after its workflow ended cancelled (then it ran): the cancel
was two UPDATEs, each with its own snapshot (now one; the race is forced in
tests/integration/test_postgresql_workflow_cancel.py). It needed a kill to land within
milliseconds of the one cancel: seen once in six PostgreSQL runs of 30 kills 0.05-0.4 s
apart, never at the defaults.
"""

from __future__ import annotations

import os
import random
from itertools import pairwise
from pathlib import Path

import pytest

import castor
from castor.states import TaskStatus, WorkflowStatus
from castor.store.base import Query, TaskRecord
from tests.conftest import wait_until
from tests.durability import Chaos, Fleet, SideEffects
from tests.workflow_chaos_app import DB_ENV, GATE_ENV, LOG_ENV, MAX_LOST, define

CHAINS, LINKS = 20, 50
CHORDS, MEMBERS = 10, 500
FAILING_LINKS, FAILING_LINK = 10, 4
FAILING_MEMBERS, FAILING_MEMBER = 100, 37
GATE_LINK = 25
MIN_KILLS = 6
GATE_KILLS = 3
CHAOS_DEADLINE = 200.0  # seconds for the load under chaos, however slow the machine
SETTLE_TIMEOUT = 90.0  # then for every task to finish (siblings of the failed chord run on)
# Short leases, so that a killed master's claims come back soon: the shortest castord
# takes with this heartbeat (1.5 x (3 + 0.25 + 2) = 7.875 s). The heartbeat timeout stays
# long enough that a busy machine does not get a child killed as unresponsive.
HEARTBEAT = ("--lease", "8", "--heartbeat-interval", "0.25", "--heartbeat-timeout", "3", "--max-lost", str(MAX_LOST))
STORES = {"sqlite": (("a",), ("--workers", "3", "--threads", "4")),
          "postgresql": (("a", "b"), ("--workers", "2", "--threads", "3"))}
UNFINISHED = (TaskStatus.WAITING, TaskStatus.PENDING, TaskStatus.RUNNING)
LOST_ERROR = "castor.errors.WorkerLost"
STOPPED_ERROR = "castor.errors.WorkflowStopped"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "durability.db")
    return "postgresql", str(request.getfixturevalue("postgres_db_url"))


class Load:
    """The workflows, enqueued; and what each must end as."""

    def __init__(self, tasks: dict[str, castor.TaskFunction]):
        t = tasks

        def step(c: int, i: int) -> castor.TaskFunction:
            return t["pstep"] if (c + i) % 2 else t["tstep"]

        def member(k: int) -> castor.TaskFunction:
            return t["pmember"] if k % 2 else t["tmember"]

        self.chains = [castor.chain(step(c, 0).s(1000 * c, 0),
                                    *(step(c, i).s(i, gate=GATE_KILLS if i == GATE_LINK else 0)
                                      for i in range(1, LINKS))).delay() for c in range(CHAINS)]
        self.chords = [castor.chord([member(k).s(10_000 * j + k) for k in range(MEMBERS)], t["tally"].s()).delay()
                       for j in range(CHORDS)]
        self.failing_chain = castor.chain(step(0, 0).s(7, 0), *(step(0, i).s(i, fail=i == FAILING_LINK)
                                                                for i in range(1, FAILING_LINKS))).delay()
        self.failing_chord = castor.chord([member(k).s(k, fail=k == FAILING_MEMBER) for k in range(FAILING_MEMBERS)],
                                          t["tally"].s()).delay()
        # Two members that run until cancelled (a thread task, a process task), two quick ones.
        self.held = castor.chord([t["hold"].s(), t["phold"].s(), t["tmember"].s(1), t["pmember"].s(2)],
                                 t["tally"].s()).delay()
        self.cancelled_at: str | None = None  # the held chord's state when the test cancelled it

    @property
    def workflows(self) -> list[castor.Workflow]:
        return [*self.chains, *self.chords, self.failing_chain, self.failing_chord, self.held]

    def ended(self, kills: int) -> bool:
        """True once every workflow has ended; cancels the held chord after MIN_KILLS kills."""
        if self.cancelled_at is None and kills >= MIN_KILLS:
            self.cancelled_at = str(self.held.status())
            self.held.cancel()
        return self.cancelled_at is not None and all(w.status().finished for w in self.workflows)


@pytest.mark.timeout(420)
def test_workflows_end_as_designed_while_castord_processes_are_killed(store: tuple[str, str],
                                                                      tmp_path: Path) -> None:
    kind, url = store
    seed = int(os.environ.get("CASTOR_DURABILITY_SEED") or random.randrange(1 << 30))
    print(f"workflow durability on {kind}: seed {seed} (CASTOR_DURABILITY_SEED={seed} replays it)")
    side_log, gate = tmp_path / "side-effects.log", tmp_path / "kills"
    slots, workers = STORES[kind]
    fleet = Fleet(tmp_path, (*workers, *HEARTBEAT), {DB_ENV: url, LOG_ENV: str(side_log), GATE_ENV: str(gate)})
    manager = castor.Manager(url)
    try:
        tasks = define(manager)
        try:
            for slot in slots:
                fleet.start(slot)
            load = Load(tasks)
            chaos = Chaos(fleet, seed, on_kill=lambda n: _write_atomically(gate, str(n)))
            chaos.run(lambda: load.ended(len(chaos.kills)), min_kills=MIN_KILLS, deadline=CHAOS_DEADLINE)
            print(f"seed {seed}: {len(chaos.kills)} kills: {chaos.describe()}")
            try:
                wait_until(lambda: not any(manager.counts()[s] for s in UNFINISHED), SETTLE_TIMEOUT,
                           "every task to finish", interval=0.2)
            except pytest.fail.Exception:
                pytest.fail(f"seed {seed}: tasks still unfinished {SETTLE_TIMEOUT:g} s after every workflow "
                            f"ended: {_unfinished(manager)}")
        finally:
            left = fleet.stop()
        assert not left, f"processes of the test's castords outlived them (killed): {left}"
        # Every castord has stopped: nothing runs behind the checks.
        records = {r.id: r for r in manager.store.list(Query())}
        log = SideEffects.read(side_log)
        _assert_designed_ends(load, records)
        _assert_runs_explained(load, records, log)
        _assert_none_lost(records, fleet)
        assert len(chaos.kills) >= MIN_KILLS and {k.kind for k in chaos.kills} == {"child", "master"}
        # The kills hit the load: members lost their worker mid-run and ran again.
        disrupted = [r.id for r in records.values() if any(h.get("lost") for h in r.history)]
        rerun = [i for i, runs in log.starts.items() if len(runs) > 1]
        print(f"seed {seed}: {len(records)} tasks, {len(disrupted)} lost a worker, {len(rerun)} ran again")
        assert disrupted and rerun, f"seed {seed}: no kill disrupted a member ({chaos.describe()})"
    finally:
        manager.close()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _unfinished(manager: castor.Manager) -> str:
    rows = [r for s in UNFINISHED for r in manager.store.list(Query(status=s), limit=10)]
    return ", ".join(f"{r.id} {r.name} {r.status} step {r.wf_step} of {r.workflow_id}" for r in rows) or "none"


def _assert_designed_ends(load: Load, records: dict[str, TaskRecord]) -> None:
    """(1) every workflow's end, and what its join gives."""
    for c, chain in enumerate(load.chains):
        assert chain.status() == WorkflowStatus.SUCCESS, (c, chain.id)
        assert chain.join(timeout=5) == 1000 * c + sum(range(LINKS)), (c, chain.id)
    for j, chord in enumerate(load.chords):
        assert chord.status() == WorkflowStatus.SUCCESS, (j, chord.id)
        assert chord.join(timeout=5) == [MEMBERS, MEMBERS * 10_000 * j + sum(range(MEMBERS))], (j, chord.id)

    chord = load.failing_chord
    assert chord.status() == WorkflowStatus.FAILED
    with pytest.raises(castor.ChordFailed) as failed:
        chord.join(timeout=5)
    bad = chord.tasks[FAILING_MEMBER]
    assert [(m.id, m.error_type) for m in failed.value.failed] == [(bad.id, "builtins.ValueError")]
    assert failed.value.more_failed == 0
    assert _error_type(records[chord.last.id]) == STOPPED_ERROR and records[chord.last.id].status == "cancelled"
    others = [t for t in chord.tasks[:-1] if t.id != bad.id]
    assert {records[t.id].status for t in others} == {TaskStatus.SUCCESS}  # the siblings ran on

    chain = load.failing_chain
    assert chain.status() == WorkflowStatus.FAILED
    with pytest.raises(ValueError, match=f"link {FAILING_LINK} fails for good"):
        chain.join(timeout=5)
    statuses = [records[t.id].status for t in chain.tasks]
    assert statuses == (["success"] * FAILING_LINK + ["failed"] + ["cancelled"] * (FAILING_LINKS - FAILING_LINK - 1))
    failing_id = chain.tasks[FAILING_LINK].id
    for later in chain.tasks[FAILING_LINK + 1:]:
        error = records[later.id].error or {}
        assert error.get("type") == STOPPED_ERROR and failing_id in error.get("message", ""), error

    held = load.held
    assert load.cancelled_at == WorkflowStatus.RUNNING  # cancelled while it ran
    assert held.status() == WorkflowStatus.CANCELLED
    with pytest.raises(castor.WorkflowCancelled):
        held.join(timeout=5)
    holders, quick, callback = held.tasks[:2], held.tasks[2:4], held.last
    assert [records[t.id].status for t in [*holders, callback]] == [TaskStatus.CANCELLED] * 3
    assert {records[t.id].status for t in quick} <= {TaskStatus.SUCCESS, TaskStatus.CANCELLED}


def _assert_runs_explained(load: Load, records: dict[str, TaskRecord], log: SideEffects) -> None:
    """(2) nothing ran twice without a lost attempt to explain it; one claim, one run; no
    follow-up before the step it follows had ended."""
    members = {t.id for w in load.workflows for t in w.tasks}
    assert members == set(records), "the store holds tasks that are no workflow's members, or misses some"
    for task_id, record in records.items():
        runs = log.starts.get(task_id, [])
        where = f"{record.name} {task_id} (step {record.wf_step} of {record.workflow_id})"
        assert len(runs) <= record.attempts, f"{where} ran {len(runs)} times in {record.attempts} attempts"
        fences = [r.fence for r in runs]
        assert len(set(fences)) == len(fences), f"{where}: two runs under one claim: {fences}"
        lost = [h for h in record.history if h.get("lost")]
        assert len(lost) >= len(runs) - 1, f"{where} ran {len(runs)} times with {len(lost)} lost attempts"
        if record.status == TaskStatus.SUCCESS:
            assert record.fence in [e.fence for e in log.ends.get(task_id, [])], \
                f"{where}: its result is not from a run of its last claim {record.fence}: {log.ends.get(task_id)}"
        elif _error_type(record) == STOPPED_ERROR and record.wf_step > 0:
            assert not runs, f"{where} ran though its step never came"
        elif _error_type(record) == STOPPED_ERROR:
            # The first step came at once: a member of it the stop ended may have begun, if
            # a kill took each run (a held chord's member requeued from a killed child, then
            # cancelled with the chord while it waited again).
            assert len(lost) >= len(runs), f"{where} ran {len(runs)} times, {len(lost)} lost, though stopped"
    followed = 0
    for workflow in load.workflows:
        for before, after in pairwise(workflow.steps):
            ended = [e.line for t in before for e in log.ends.get(t.id, [])]
            for task in after:
                runs = log.starts.get(task.id)
                if not runs:
                    continue
                followed += 1
                assert len(ended) >= len(before) and runs[0].line > max(ended), \
                    f"{task.id} of {workflow.id} started (line {runs[0].line}) before the step it follows ended"
    # Checked: every chain's links after the first, every callback that was to run, and
    # the failing chain's links 1 to FAILING_LINK (the held chord's callback never ran).
    assert followed == CHAINS * (LINKS - 1) + CHORDS + FAILING_LINK, followed
    for chord in load.chords:
        # Every run of the callback had its members' results in order. More than one run
        # only with a lost attempt for each extra one (checked above, per task): CI (seed
        # 530494055) killed a child after the callback's end line and before its settle.
        details = [e.detail for e in log.ends.get(chord.last.id, [])]
        assert details and set(details) == {"ordered"}, \
            f"the callback of {chord.id} did not run with its members' results in order: {details}"


def _assert_none_lost(records: dict[str, TaskRecord], fleet: Fleet) -> None:
    """(3) nothing left unfinished, no WorkerLost, no advance the sweep had to make."""
    left = [(r.id, r.status) for r in records.values() if r.status in UNFINISHED]
    assert not left, left
    lost = [r.id for r in records.values() if _error_type(r) == LOST_ERROR]
    assert not lost, f"kills turned into WorkerLost: {lost}"
    missed = fleet.events("workflow.advance_missed")
    assert not missed, missed


def _error_type(record: TaskRecord) -> str | None:
    return (record.error or {}).get("type")
