"""Property tests (hypothesis) on a real store: the task state machine, and values
through the whole enqueue → run → result path.

`StoreMachine` drives a SQLiteStore on a fresh database file with the two clocks
a host has, both its own: the wall clock (`wall`: every `now=`, the ETAs,
enqueued_at, started_at, finished_at), which an operator or NTP may step back,
and the lease clock (`clock`, put in as the store's `clock`; the boot clock in
production), which only moves forward. release_owner and requeue stamp
finished_at from time.time(), which the model allows for.

It runs any interleaving of enqueue, claim (of the ordinary tasks or of those
set apart to run alone), renew of any mix of current and stale claims, settle
(success, failure, retry, cancelled, dropped), cancel, progress, lease expiry and
recovery, a wall clock stepping back, a worker that claims the same task again
while still holding its old claim (it stalled past its lease, was drained, or
handed the task back), release of a lost or drained worker's tasks (blamed, or
set apart when several tasks shared the crash), manual retry and purge.
It keeps a model of what every row must hold, its fencing token included, and
after each step reads every row back and checks it against the model and
against castor.states.TRANSITIONS.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

import castor
from castor.errors import SerializationError
from castor.states import FINISHED, TaskStatus, can_transition
from castor.store import NewTask, Query
from castor.store.base import Settlement, TaskRecord
from castor.store.sqlite import SQLiteStore
from tests.strategies import json_normal, json_values, property_settings, same, surrogate_text

MAX_LOST = 3
SLOTS = (1, 2, 3)  # worker slots; each runs as one owner
QUEUES = ("a", "b")
MODES = ("process", "thread")
START = 1000.0  # the wall clock's start (an epoch time)
# The lease clock's (seconds since boot): far from the wall clock's, so that a
# lease told on the wrong clock shows.
CLOCK_START = 50.0


class _RealTime:
    """A finished_at the store took from time.time() (release_owner, requeue)."""

    def __repr__(self) -> str:
        return "REAL_TIME"


REAL_TIME = _RealTime()


@dataclass(frozen=True)
class Token:
    """What a worker holds for one claimed attempt: the claim (task id, fencing token)."""

    task_id: str
    owner: str
    attempt: int
    fence: int

    @property
    def claim(self) -> tuple[str, int]:
        return (self.task_id, self.fence)


@dataclass
class Expected:
    """The model of one stored row."""

    id: str
    mode: str
    queue: str
    priority: int
    enqueued_at: float
    eta: float
    unique_key: str | None
    status: TaskStatus = TaskStatus.PENDING
    attempts: int = 0
    lost: int = 0
    owner: str | None = None
    fence: int = 0  # bumped by every claim; the running claim's token while running
    isolate: bool = False  # set apart by a thread-host crash beside other tasks
    at_once: bool = False
    lease_expires: float | None = None  # on the lease clock
    started_at: float | None = None
    finished_at: Any = None  # float, None or REAL_TIME
    expires_at: float | None = None
    cancel_requested: bool = False
    result: str | None = None
    error_type: str | None = None
    progress: tuple[float | None, str | None] | None = None
    history: list[int] = field(default_factory=list)  # the attempt of each failed or lost attempt's entry


def better(a: Expected | TaskRecord, b: Expected | TaskRecord) -> bool:
    """`a` comes strictly before `b` in claim order (priority, then ETA)."""
    return (a.priority, -a.eta) > (b.priority, -b.eta)


class StoreMachine(RuleBasedStateMachine):
    """Any interleaving of the store's operations keeps every row legal and as modelled."""

    tokens = Bundle("tokens")
    task_ids = Bundle("task_ids")

    # Owners claim again after a drain, and after a stall past their lease: each
    # claim has its own fencing token, so the same owner's old claim of the same
    # task is refused (claim_own_task_again). True would give a drained owner's
    # slot a fresh owner, as castord does for its children.
    RETIRE_DRAINED_OWNERS = False

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="castor-props-")
        self.store = SQLiteStore(f"{self.dir}/app.db")
        self.wall = START
        self.clock = CLOCK_START
        self.store.clock = lambda: self.clock
        # A second connection, to read the leases as stored (on the lease clock):
        # records tell them as epoch times through time.time(), which moves.
        self.raw = sqlite3.connect(f"{self.dir}/app.db", isolation_level=None)
        self.real_start = time.time()
        self.model: dict[str, Expected] = {}
        self.generation = dict.fromkeys(SLOTS, 0)
        self.next_id = 0
        self.hosts = 0  # castord children started by host_crashes (each a fresh owner)
        self.snapshot: dict[str, TaskRecord] = {}
        # What the last step may legitimately have done beyond single transitions.
        self.reclaimed: set[str] = set()  # running → … → running under a new claim in one step
        self.passed_through: set[str] = set()  # … → running → … in one step (claimed, then released)
        self.uncounted: set[str] = set()  # attempts handed back (drain): attempts - 1
        self.reset_lost: set[str] = set()  # manual retry: lost back to 0

    def teardown(self) -> None:
        self.raw.close()
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -------------------------------------------------------------

    def owner(self, slot: int) -> str:
        return f"w{slot}.{self.generation[slot]}"

    def rows(self) -> dict[str, TaskRecord]:
        """Every row, its lease put back on the lease clock (after checking that the
        record told it as an epoch time correctly), so that rows compare exactly."""
        before = time.time()
        records = self.store.list(Query())
        after = time.time()
        stored = dict(self.raw.execute("SELECT id, lease_expires FROM castor_tasks").fetchall())
        for r in records:
            if r.lease_expires is not None:
                lease = stored[r.id]
                low, high = lease + (before - self.clock), lease + (after - self.clock)
                assert low - 1e-3 <= r.lease_expires <= high + 1e-3, (r.id, r.lease_expires, lease)
                r.lease_expires = lease
        return {r.id: r for r in records}

    def unfinished_twin(self, key: str | None, other_than: str | None = None) -> Expected | None:
        if key is None:
            return None
        for t in self.model.values():
            if t.unique_key == key and t.id != other_than and t.status in (TaskStatus.PENDING, TaskStatus.RUNNING):
                return t
        return None

    def held(self, task_id: str, fence: int) -> bool:
        """Whether the claim (task_id, fence) holds its task."""
        t = self.model.get(task_id)
        return t is not None and t.status == TaskStatus.RUNNING and t.fence == fence

    def holds(self, token: Token) -> bool:
        return self.held(*token.claim)

    def is_due(self, t: Expected) -> bool:
        """The store's rule: the ETA has passed, or the task was enqueued without one
        (eta <= enqueued_at), however far the wall clock stepped back since. (Which
        also takes in a retry whose backoff ends before enqueued_at: see
        test_a_retry_waits_its_delay_even_after_the_wall_clock_stepped_back.)"""
        return t.status == TaskStatus.PENDING and (t.eta <= self.wall or t.at_once)

    def due(self, mode: str, queues: list[str] | None, isolated: bool = False) -> list[Expected]:
        return [t for t in self.model.values()
                if self.is_due(t) and t.mode == mode and t.isolate == isolated
                and (not queues or t.queue in queues)]

    def take_claims(self, owner: str, limit: int, lease: float, claimed: list[TaskRecord],
                    due: list[Expected]) -> list[Token]:
        """Check a claim's answer against the model, then apply it."""
        assert len(claimed) == min(limit, len(due)), (claimed, due)
        assert len({r.id for r in claimed}) == len(claimed)
        due_ids = {t.id for t in due}
        ids = {r.id for r in claimed}
        for r in claimed:
            assert r.id in due_ids, f"claimed {r.id}, which was not due"
            for t in due:  # best first: nothing left behind comes before anything taken
                assert t.id in ids or not better(t, r), f"left {t.id} behind for {r.id}"
        assert [(-r.priority, r.eta) for r in claimed] == sorted((-r.priority, r.eta) for r in claimed)
        out = []
        for r in claimed:
            t = self.model[r.id]
            t.status, t.owner, t.attempts, t.fence = TaskStatus.RUNNING, owner, t.attempts + 1, t.fence + 1
            # A start is never before the enqueue (a wall clock stepped back since, or a
            # `now` read before the claim's lock).
            t.lease_expires, t.started_at = self.clock + lease, max(self.wall, t.enqueued_at)
            # A claim tells its lease as a wall-clock time: the `now` it was given + lease.
            assert (r.status, r.owner, r.attempts, r.fence, r.isolate, r.lease_expires, r.started_at) == (
                TaskStatus.RUNNING, owner, t.attempts, t.fence, t.isolate, self.wall + lease, t.started_at)
            out.append(Token(r.id, owner, t.attempts, t.fence))
        return out

    def lose(self, t: Expected, finished_at: Any) -> None:
        """The store's `_lose` for one running task (lease expired, or worker died)."""
        t.lease_expires = None
        if t.cancel_requested:
            t.status, t.finished_at = TaskStatus.CANCELLED, finished_at
        elif t.lost + 1 >= MAX_LOST:
            t.status, t.finished_at, t.lost = TaskStatus.FAILED, finished_at, t.lost + 1
            t.error_type = "castor.errors.WorkerLost"
            t.history.append(t.attempts)  # the lost attempt's entry (lost: true)
        else:
            t.status, t.lost, t.progress = TaskStatus.PENDING, t.lost + 1, None
            t.history.append(t.attempts)

    def set_apart(self, t: Expected) -> None:
        """release_owner for one of several tasks held by a host that crashed (thread
        tasks side by side, or a process worker's prefetched batch): none is blamed
        (lost, attempts unchanged); it runs alone next."""
        t.lease_expires = None
        if t.cancel_requested:
            t.status, t.finished_at = TaskStatus.CANCELLED, REAL_TIME
        else:
            t.status, t.progress, t.isolate = TaskStatus.PENDING, None, True
            t.history.append(t.attempts)  # lost beside others: an entry, no blame

    def hand_back(self, t: Expected, *, count_attempt: bool) -> None:
        """requeue / a drain's release_owner for one running task."""
        t.lease_expires = None
        if t.cancel_requested:
            t.status, t.finished_at = TaskStatus.CANCELLED, REAL_TIME
        else:
            t.status, t.progress = TaskStatus.PENDING, None
            if not count_attempt:
                t.attempts -= 1
                self.uncounted.add(t.id)

    def apply_settlement(self, s: Settlement, token: Token) -> None:
        t = self.model[token.task_id]
        t.lease_expires = None
        if s.drop:
            del self.model[t.id]
            return
        if s.status == TaskStatus.PENDING:
            t.history.append(token.attempt)
            t.error_type = (s.error or {}).get("type")
            t.progress = None
            assert s.eta is not None
            t.eta = s.eta  # written even when a cancel request ends the task instead
            t.at_once = s.eta <= s.finished_at
            if t.cancel_requested:
                t.status, t.finished_at = TaskStatus.CANCELLED, s.finished_at
            else:
                t.status, t.finished_at = TaskStatus.PENDING, None
            return
        t.status, t.finished_at, t.expires_at = s.status, s.finished_at, s.expires_at
        if s.status == TaskStatus.FAILED:
            t.history.append(token.attempt)
            t.error_type = (s.error or {}).get("type")
        else:
            t.result = s.result
            t.error_type = (s.error or {}).get("type") if s.error else None

    def settlement(self, token: Token, outcome: str, delay: float, ttl: float | None) -> Settlement:
        error = {"type": f"builtins.{outcome.title()}Error", "message": outcome, "traceback": "", "args": []}
        expires_at = None if ttl is None else self.wall + ttl
        fence = token.fence
        if outcome == "success":
            return Settlement(token.task_id, token.owner, token.attempt, TaskStatus.SUCCESS,
                              result=f'"{token.task_id}#{token.attempt}"', finished_at=self.wall,
                              expires_at=expires_at, fence=fence)
        if outcome == "drop":  # result_ttl=0
            return Settlement(token.task_id, token.owner, token.attempt, TaskStatus.SUCCESS, result="1",
                              finished_at=self.wall, expires_at=self.wall, drop=True, fence=fence)
        if outcome == "retry":
            return Settlement(token.task_id, token.owner, token.attempt, TaskStatus.PENDING, error=error,
                              finished_at=self.wall, eta=self.wall + delay, fence=fence)
        status = TaskStatus.FAILED if outcome == "failed" else TaskStatus.CANCELLED
        return Settlement(token.task_id, token.owner, token.attempt, status, error=error,
                          finished_at=self.wall, expires_at=expires_at, fence=fence)

    def refuses(self, token: Token) -> None:
        """Every write fenced by a claim that no longer holds its task is refused,
        and changes nothing."""
        assert not self.holds(token)
        before = self.rows()
        assert self.store.renew([token.claim], lease=10.0) == set()
        assert not self.store.set_progress(token.task_id, token.fence, 0.5, "stale")
        assert not self.store.requeue(token.task_id, token.fence, count_attempt=False)
        for outcome in ("success", "retry", "drop"):
            assert not self.store.settle_one(self.settlement(token, outcome, 0.0, None)), outcome
        stale = self.settlement(token, "failed", 0.0, None)
        assert self.store.settle_and_claim([stale], token.owner, mode="process", queues=None, limit=0,
                                           lease=1.0, now=self.wall) == ([False], [])
        assert self.rows() == before, "a refused write changed something"

    # -- producing -------------------------------------------------------------

    @initialize(target=task_ids, count=st.integers(1, 4), priorities=st.lists(st.integers(-1, 1), min_size=4),
                modes=st.lists(st.sampled_from(MODES), min_size=4))
    def some_tasks(self, count: int, priorities: list[int], modes: list[str]) -> Any:
        """Start with a few due tasks, so that most runs reach claims, leases and settles."""
        return multiple(*[self.enqueue(modes[i], QUEUES[i % 2], priorities[i], None, None) for i in range(count)])

    @precondition(lambda self: len(self.model) < 12)
    @rule(target=task_ids, mode=st.sampled_from(MODES), queue=st.sampled_from(QUEUES),
          priority=st.integers(-2, 2), delay=st.sampled_from([None, 0.0, 2.0, 6.0, -1.0]),
          unique_key=st.sampled_from([None, None, "u1", "u2"]))
    def enqueue(self, mode: str, queue: str, priority: int, delay: float | None, unique_key: str | None) -> str:
        task_id = f"t{self.next_id}"
        self.next_id += 1
        eta = self.wall if delay is None else self.wall + delay
        task = NewTask(id=task_id, name="t", mode=mode, serializer="json", args="[]", kwargs="{}",
                       enqueued_at=self.wall, eta=eta, queue=queue, priority=priority, unique_key=unique_key)
        (returned,) = self.store.enqueue([task])
        twin = self.unfinished_twin(unique_key)
        if twin is not None:
            assert returned == twin.id, "a unique task's unfinished twin answers the enqueue"
        else:
            assert returned == task_id
            self.model[task_id] = Expected(task_id, mode, queue, priority, self.wall, eta, unique_key,
                                           at_once=eta <= self.wall)
        return returned

    # -- consuming -------------------------------------------------------------

    @rule(target=tokens, slot=st.sampled_from(SLOTS), mode=st.sampled_from(MODES),
          queues=st.sampled_from([None, ["a"], ["b"], ["a", "b"]]), limit=st.integers(1, 3),
          lease=st.sampled_from([1.0, 4.0, 10.0]), isolated=st.sampled_from([False, False, True]))
    def claim(self, slot: int, mode: str, queues: list[str] | None, limit: int, lease: float,
              isolated: bool) -> Any:
        owner = self.owner(slot)
        due = self.due(mode, queues, isolated)
        claimed = self.store.claim(owner, mode=mode, queues=queues, limit=limit, lease=lease, now=self.wall,
                                   isolated=isolated)
        if isolated:
            event("claim(isolated=True): " + ("took some" if claimed else "none set apart"))
        return multiple(*self.take_claims(owner, limit, lease, claimed, due))

    @rule(target=tokens, task_id=task_ids, slot=st.sampled_from(SLOTS))
    def claim_task(self, task_id: str, slot: int) -> Any:
        """The eager path: claim one named task, whatever its ETA."""
        owner = self.owner(slot)
        t = self.model.get(task_id)
        record = self.store.claim_task(task_id, owner, lease=10.0, now=self.wall)
        if t is None or t.status != TaskStatus.PENDING:
            assert record is None
            return multiple()
        assert record is not None
        return multiple(*self.take_claims(owner, 1, 10.0, [record], [t]))

    # `first` apart from `more`: a rule drawing only from st.lists(tokens) would be
    # tried with no tokens yet, and give the whole example up.
    @rule(first=tokens, more=st.lists(tokens, max_size=3), ahead=st.booleans(),
          lease=st.sampled_from([1.0, 4.0, 10.0]))
    def renew(self, first: Token, more: list[Token], ahead: bool, lease: float) -> None:
        """A worker renews the claims it runs: any mix of current ones and stale ones
        (an attempt whose lease went, a claim from before a drain), and with `ahead`
        a token one past the first claim's (no claim was given it yet, or a later one was)."""
        asked = [token.claim for token in (first, *more)]
        if ahead:
            asked.append((first.task_id, first.fence + 1))
        want = {claim for claim in asked if self.held(*claim)}
        got = self.store.renew(asked, lease=lease)
        assert got == want, f"renew {asked}: store kept {got}, the model holds {want}"
        event("renew: " + ("mixed held and stale" if want and len(set(asked)) > len(want)
                           else "all held" if want else "none held"))
        for task_id, _fence in want:
            self.model[task_id].lease_expires = self.clock + lease

    @rule(token=tokens, outcome=st.sampled_from(["success", "failed", "retry", "cancelled", "drop"]),
          delay=st.sampled_from([0.0, 3.0]), ttl=st.sampled_from([None, 1.0, 5.0]))
    def settle(self, token: Token, outcome: str, delay: float, ttl: float | None) -> None:
        s = self.settlement(token, outcome, delay, ttl)
        before = self.rows()
        holds = self.holds(token)
        accepted = self.store.settle_one(s)
        note(f"settle {token} {outcome}: accepted={accepted}, held={holds}")
        event("settle: " + ("accepted" if accepted else "refused (stale claim)"))
        assert accepted == holds, f"settle by {token} accepted={accepted}, but the model says held={holds}"
        if accepted:
            self.apply_settlement(s, token)
        else:
            assert self.rows() == before, "a refused settle changed something"

    @rule(target=tokens, token=tokens, outcome=st.sampled_from(["success", "failed", "retry", "drop"]),
          slot=st.sampled_from(SLOTS), limit=st.integers(0, 2), mode=st.sampled_from(MODES),
          isolated=st.sampled_from([False, False, True]))
    def settle_and_claim(self, token: Token, outcome: str, slot: int, limit: int, mode: str,
                         isolated: bool) -> Any:
        """The busy worker's hot path: settle, then claim more, in one transaction."""
        s = self.settlement(token, outcome, 0.0, None)
        owner = self.owner(slot)
        holds = self.holds(token)
        accepted, claimed = self.store.settle_and_claim(
            [s], owner, mode=mode, queues=None, limit=limit, lease=4.0, now=self.wall, isolated=isolated)
        assert accepted == [holds]
        if holds:
            self.apply_settlement(s, token)
            if s.status == TaskStatus.PENDING and token.task_id in self.model:
                self.reclaimed.add(token.task_id)
        due = self.due(mode, None, isolated)
        return multiple(*self.take_claims(owner, limit, 4.0, claimed, due))

    @rule(token=tokens, fraction=st.sampled_from([None, 0.0, 0.5, 1.0]),
          message=st.sampled_from([None, "half", "é"]))
    def set_progress(self, token: Token, fraction: float | None, message: str | None) -> None:
        holds = self.holds(token)
        assert self.store.set_progress(token.task_id, token.fence, fraction, message) == holds
        if holds:
            self.model[token.task_id].progress = None if fraction is None and message is None else (fraction, message)

    @rule(token=consumes(tokens), count_attempt=st.booleans())
    def requeue(self, token: Token, count_attempt: bool) -> None:
        holds = self.holds(token)
        assert self.store.requeue(token.task_id, token.fence, count_attempt=count_attempt) == holds
        if holds:
            self.hand_back(self.model[token.task_id], count_attempt=count_attempt)
            if not count_attempt:
                self.retire(token.owner)

    @rule(target=tokens, token=tokens, how=st.sampled_from(["lease expired", "drained", "requeued"]),
          via=st.sampled_from(["claim", "claim_task"]), lease=st.sampled_from([1.0, 10.0]))
    def claim_own_task_again(self, token: Token, how: str, via: str, lease: float) -> Any:
        """One owner, two claims of one task: the worker stalled past its lease (SIGSTOP,
        a long pause) and recovery handed the task back, or it was drained, or it handed
        the task back itself; then it claims the same task again while its old attempt
        still holds the old token. Only the new claim counts, wherever the old one is used."""
        if not self.holds(token):
            return multiple()
        t = self.model[token.task_id]
        if how == "lease expired":
            assert t.lease_expires is not None
            self.advance_clock(max(0.5, t.lease_expires - self.clock + 0.5))
            self.recover_expired()
        elif how == "drained":
            self.release(token.owner, count_attempt=False)
        else:
            assert self.store.requeue(token.task_id, token.fence, count_attempt=False)
            self.hand_back(t, count_attempt=False)
        claims: list[Token] = []
        if t.status == TaskStatus.PENDING:  # not failed (lost too often) nor cancelled
            due = self.due(t.mode, [t.queue], t.isolate)
            if via == "claim" and t in due:
                claimed = self.store.claim(token.owner, mode=t.mode, queues=[t.queue], limit=len(due),
                                           lease=lease, now=self.wall, isolated=t.isolate)
                claims = self.take_claims(token.owner, len(due), lease, claimed, due)
            else:
                record = self.store.claim_task(t.id, token.owner, lease=lease, now=self.wall)
                assert record is not None
                claims = self.take_claims(token.owner, 1, lease, [record], [t])
            self.reclaimed.update(c.task_id for c in claims)  # recovered or handed back, then claimed
        event(f"claim_own_task_again: {how}, {'claimed again' if claims else 'ended instead'}")
        self.refuses(token)
        again = next((c for c in claims if c.task_id == token.task_id), None)
        if again is not None:
            assert (again.owner, again.fence) == (token.owner, token.fence + 1)
            # A drain or a requeue hands the attempt back uncounted: the number repeats, the token does not.
            assert again.attempt == token.attempt + (how == "lease expired")
            assert self.store.renew([token.claim, again.claim], lease=lease) == {again.claim}
            t.lease_expires = self.clock + lease
            assert self.store.set_progress(t.id, again.fence, 0.25, "again")
            t.progress = (0.25, "again")
        return multiple(*claims)

    # -- time, leases, lost workers ----------------------------------------------

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 7.0, 12.0]))
    def advance_clock(self, seconds: float) -> None:
        """Time passes: both clocks move."""
        self.wall += seconds
        self.clock += seconds

    @rule(seconds=st.sampled_from([-3600.0, -30.0, -5.0, -1.0, 30.0]))
    def step_wall_clock(self, seconds: float) -> None:
        """An operator or NTP steps the wall clock, mostly back. The lease clock does
        not move: no lease expires or lasts longer for it. A task enqueued without an
        ETA stays due; one whose ETA is ahead of the wall clock is not due yet."""
        self.wall += seconds
        event("step_wall_clock: " + ("back" if seconds < 0 else "forward"))

    @rule()
    def recover_expired(self) -> None:
        """What every worker runs about once a second."""
        expired = [t for t in self.model.values()
                   if t.status == TaskStatus.RUNNING and t.lease_expires is not None and t.lease_expires < self.clock]
        assert len(self.store.recover_expired(now=self.wall, max_lost=MAX_LOST)) == len(expired)
        event("recover_expired: " + ("recovered some" if expired else "nothing expired"))
        for t in expired:
            self.lose(t, self.wall)

    @rule(slot=st.sampled_from(SLOTS), count_attempt=st.booleans())
    def release_owner(self, slot: int, count_attempt: bool) -> None:
        """castord: a child died (count_attempt) or was drained with tasks still held."""
        self.release(self.owner(slot), count_attempt=count_attempt)

    @rule(target=tokens, modes=st.sampled_from([("thread",), ("thread",), ("process",), ("thread", "process")]),
          limit=st.integers(1, 3), isolated=st.sampled_from([False, False, True]), fresh=st.integers(0, 2),
          priority=st.integers(-2, 2))
    def host_crashes(self, modes: tuple[str, ...], limit: int, isolated: bool, fresh: int, priority: int) -> Any:
        """A castord child (an owner of its own) claims tasks, or one task set apart to
        run alone, and dies running them; castord releases what it held. Several tasks
        (thread tasks side by side, a process worker's prefetched batch): none is blamed,
        each is set apart. One alone: blamed. (`fresh` tasks are enqueued first, so that
        it often finds several.)"""
        for i in range(fresh if len(self.model) < 12 else 0):
            self.enqueue(modes[i % len(modes)], "a", priority, None, None)
        self.hosts += 1
        owner = f"host{self.hosts}"
        isolated = isolated and len(modes) == 1
        tokens: list[Token] = []
        for mode in modes:
            n = 1 if isolated else limit
            due = self.due(mode, None, isolated)
            claimed = self.store.claim(owner, mode=mode, queues=None, limit=n, lease=10.0, now=self.wall,
                                       isolated=isolated)
            tokens += self.take_claims(owner, n, 10.0, claimed, due)
        if isolated and tokens:
            event("host_crashes: running one task set apart, alone")
        self.passed_through.update(token.task_id for token in tokens)
        self.release(owner, count_attempt=True)
        return multiple(*tokens)  # stale from here on

    def release(self, owner: str, *, count_attempt: bool) -> None:
        held = [t for t in self.model.values() if t.status == TaskStatus.RUNNING and t.owner == owner]
        # Several tasks shared the process that crashed: none is blamed, each runs alone next.
        apart = count_attempt and len(held) > 1
        released = self.store.release_owner(owner, count_attempt=count_attempt, max_lost=MAX_LOST)
        assert sorted(r.id for r in released) == sorted(t.id for t in held)
        event("release_owner: " + ("held none" if not held else "drained" if not count_attempt
                                   else "lost, several tasks: set apart" if apart
                                   else "lost, one task: blamed"))
        for t in held:
            if apart:
                self.set_apart(t)
            elif count_attempt:
                self.lose(t, REAL_TIME)
            else:
                self.hand_back(t, count_attempt=False)
        for r in released:  # the records as they are after release
            self.check_model(self.model[r.id], r)
        if held and not count_attempt:
            self.retire(owner)

    def retire(self, owner: str) -> None:
        if self.RETIRE_DRAINED_OWNERS:
            slot = int(owner[1:].split(".")[0])
            if self.owner(slot) == owner:
                self.generation[slot] += 1

    # -- cancelling, retrying, purging ---------------------------------------------

    @rule(task_id=task_ids, ttl=st.sampled_from([None, 2.0]))
    def cancel(self, task_id: str, ttl: float | None) -> None:
        t = self.model.get(task_id)
        expires_at = None if ttl is None else self.wall + ttl
        status = self.store.cancel(task_id, now=self.wall, expires_at=expires_at)
        if t is None:
            assert status is None
        elif t.status == TaskStatus.PENDING:
            assert status == TaskStatus.CANCELLED
            t.status, t.finished_at, t.expires_at = TaskStatus.CANCELLED, self.wall, expires_at
        else:
            assert status == t.status  # running: stop requested; finished: unchanged
            if t.status == TaskStatus.RUNNING:
                t.cancel_requested = True

    def retried(self, t: Expected) -> None:
        # The fencing token and the attempt count go on; a manual retry is a fresh
        # start: no loss counted, not set apart.
        t.status, t.eta, t.owner, t.finished_at, t.started_at = TaskStatus.PENDING, self.wall, None, None, None
        t.at_once, t.isolate = True, False
        t.expires_at, t.lost, t.cancel_requested, t.progress = None, 0, False, None
        t.result, t.error_type = None, None
        self.reset_lost.add(t.id)

    @rule(task_id=task_ids)
    def retry_one(self, task_id: str) -> None:
        t = self.model.get(task_id)
        ids = self.store.retry(task_id=task_id, now=self.wall)
        ok = (t is not None and t.status in (TaskStatus.FAILED, TaskStatus.CANCELLED)
              and self.unfinished_twin(t.unique_key, other_than=t.id) is None)
        assert ids == ([task_id] if ok else [])
        if ok:
            assert t is not None
            self.retried(t)

    @rule(status=st.sampled_from([TaskStatus.FAILED, TaskStatus.CANCELLED]), queue=st.sampled_from([None, *QUEUES]))
    def retry_many(self, status: TaskStatus, queue: str | None) -> None:
        matching = {t.id for t in self.model.values() if t.status == status and queue in (None, t.queue)}
        ids = self.store.retry(Query(status=status, queue=queue), now=self.wall)
        assert set(ids) <= matching and len(set(ids)) == len(ids)
        for task_id in ids:
            t = self.model[task_id]
            assert self.unfinished_twin(t.unique_key, other_than=t.id) is None
            self.retried(t)
        for task_id in matching - set(ids):  # only a unique key's unfinished twin keeps one back
            t = self.model[task_id]
            assert self.unfinished_twin(t.unique_key, other_than=t.id) is not None, f"{task_id} not retried"

    @rule(status=st.sampled_from([None, *sorted(FINISHED)]), queue=st.sampled_from([None, *QUEUES]))
    def purge(self, status: TaskStatus | None, queue: str | None) -> None:
        gone = {t.id for t in self.model.values()
                if t.status.finished and status in (None, t.status) and queue in (None, t.queue)}
        assert self.store.purge(Query(status=status, queue=queue)) == len(gone)
        for task_id in gone:
            del self.model[task_id]

    @rule()
    def purge_expired(self) -> None:
        """The TTL sweep every worker runs."""
        gone = {t.id for t in self.model.values() if t.expires_at is not None and t.expires_at < self.wall}
        assert self.store.purge_expired(now=self.wall) == len(gone)
        for task_id in gone:
            del self.model[task_id]

    # -- what must hold after every step ---------------------------------------------

    @invariant()
    def rows_are_legal_and_as_modelled(self) -> None:
        rows = self.rows()
        # Nothing disappears but by purge, the TTL sweep or a dropped success; nothing appears.
        assert rows.keys() == self.model.keys(), (sorted(rows), sorted(self.model))
        for task_id, r in rows.items():
            self.check_row(r)
            previous = self.snapshot.get(task_id)
            if previous is not None:
                self.check_change(previous, r)
            self.check_model(self.model[task_id], r)
        unfinished_keys = [r.unique_key for r in rows.values()
                           if r.unique_key is not None and not r.status.finished]
        assert len(unfinished_keys) == len(set(unfinished_keys)), "two unfinished tasks share a unique key"
        counts = self.store.counts_by_status()
        assert counts == {s: sum(r.status == s for r in rows.values()) for s in TaskStatus}
        # Dirty: a worker vanished while running it, blamed (lost) or not (set apart).
        dirty = {t.id for t in self.model.values() if t.lost > 0 or t.isolate}
        assert {r.id for r in self.store.list(Query(dirty=True))} == dirty
        self.snapshot = rows
        self.reclaimed, self.passed_through, self.uncounted, self.reset_lost = set(), set(), set(), set()

    @invariant()
    def what_is_due_is_as_modelled(self) -> None:
        """has_due, queue_stats and next_due against the model, on the wall clock as it
        is now (stepped back or not)."""
        for mode in MODES:
            for isolated in (False, True):
                for queues in (None, ["a"], ["b"]):
                    want = bool(self.due(mode, queues, isolated))
                    got = self.store.has_due(mode=mode, queues=queues, now=self.wall, isolated=isolated)
                    assert got == want, f"has_due({mode}, {queues}, isolated={isolated}) = {got}"
        pending = [t for t in self.model.values() if t.status == TaskStatus.PENDING]
        due_etas = [t.eta for t in pending if self.is_due(t)]
        stats = self.store.queue_stats(now=self.wall)
        assert stats["scheduled"] == len(pending) - len(due_etas)
        assert stats["oldest_due"] == (min(due_etas) if due_etas else None)
        # Leases told on the wall clock: now + what is left of them on the lease clock.
        leases = [self.wall + (t.lease_expires - self.clock) for t in self.model.values()
                  if t.status == TaskStatus.RUNNING and t.lease_expires is not None]
        # next_due: when a worker of `mode` serving `queues` should look again: the next
        # ETA it may claim (not one due already, set apart, or in another queue), or a lease.
        for mode in MODES:
            for queues in (None, ["a"], ["b"]):
                times = [t.eta for t in pending if t.mode == mode and not t.isolate and not t.at_once
                         and t.eta > self.wall and (not queues or t.queue in queues)] + leases
                got = self.store.next_due(mode=mode, now=self.wall, queues=queues)
                assert got == (min(times) if times else None), f"next_due({mode}, {queues})"

    @invariant()
    def cancel_requests_name_the_current_claims(self) -> None:
        owners = {self.owner(slot) for slot in SLOTS}
        owners |= {t.owner for t in self.model.values() if t.owner is not None}
        for owner in owners:
            want = sorted((t.id, t.fence) for t in self.model.values()
                          if t.status == TaskStatus.RUNNING and t.owner == owner and t.cancel_requested)
            assert sorted(self.store.cancel_requests(owner)) == want

    @staticmethod
    def check_row(r: TaskRecord) -> None:
        assert isinstance(r.status, TaskStatus)
        if r.status == TaskStatus.RUNNING:
            assert r.owner is not None and r.lease_expires is not None and r.started_at is not None
            assert r.attempts >= 1 and r.fence >= 1
        else:
            assert r.lease_expires is None, f"{r.id} is {r.status} but holds a lease"
        if r.status.finished:
            assert r.finished_at is not None, f"{r.id} is {r.status} without finished_at"
        else:
            assert r.finished_at is None, f"{r.id} is {r.status} but has finished_at"
            assert r.expires_at is None, f"{r.id} is {r.status} but has an expiry"
        if r.status == TaskStatus.PENDING:
            assert not r.cancel_requested, f"{r.id} is pending with a cancel request"
            # Progress belongs to the running attempt (docs/design.md): none while queued.
            assert r.progress is None and r.progress_message is None, f"{r.id} is pending with progress"
        if r.status == TaskStatus.FAILED and r.error and r.error["type"] == "castor.errors.WorkerLost":
            assert r.lost == MAX_LOST
        assert 0 <= r.lost <= MAX_LOST
        assert 0 <= r.attempts <= r.fence, f"{r.id}: {r.attempts} attempts, {r.fence} claims"
        assert [h["attempt"] for h in r.history] == sorted(h["attempt"] for h in r.history)

    def check_change(self, old: TaskRecord, new: TaskRecord) -> None:
        if new.id in self.passed_through:
            assert can_transition(old.status, TaskStatus.RUNNING), f"{new.id}: {old.status} -> running"
            assert new.status == TaskStatus.RUNNING or can_transition(TaskStatus.RUNNING, new.status), (
                f"{new.id}: running -> {new.status}")
        elif old.status != new.status:
            assert can_transition(old.status, new.status), f"{new.id}: {old.status} -> {new.status}"
        # The fencing token never goes down, and only a claim moves it (one claim per step).
        assert new.fence in (old.fence, old.fence + 1), f"{new.id}: fence {old.fence} -> {new.fence}"
        if new.fence != old.fence:
            assert new.status == TaskStatus.RUNNING or new.id in self.passed_through, (
                f"{new.id}: fence moved, but it is {new.status}")
            if old.status == TaskStatus.RUNNING:
                assert new.id in self.reclaimed, f"{new.id}: a new claim without leaving running"
        elif new.status == TaskStatus.RUNNING == old.status:
            assert (new.owner, new.attempts, new.started_at) == (old.owner, old.attempts, old.started_at)
        if new.attempts < old.attempts:
            assert new.id in self.uncounted and new.attempts == old.attempts - 1, (
                f"{new.id}: attempts {old.attempts} -> {new.attempts}")
            assert old.status == TaskStatus.RUNNING
        if new.lost < old.lost:
            assert new.id in self.reset_lost and new.lost == 0
        assert len(new.history) >= len(old.history), "history never shrinks"
        assert (new.enqueued_at, new.priority, new.queue, new.mode) == (
            old.enqueued_at, old.priority, old.queue, old.mode)

    def check_model(self, t: Expected, r: TaskRecord) -> None:
        got = (r.status, r.attempts, r.lost, r.owner, r.fence, r.isolate, r.lease_expires, r.started_at,
               r.expires_at, r.cancel_requested, r.enqueued_at, r.eta, r.result, (r.error or {}).get("type"),
               [h["attempt"] for h in r.history])
        want = (t.status, t.attempts, t.lost, t.owner, t.fence, t.isolate, t.lease_expires, t.started_at,
                t.expires_at, t.cancel_requested, t.enqueued_at, t.eta, t.result, t.error_type, t.history)
        assert got == want, f"{r.id}: store {got} != model {want}"
        if t.finished_at is REAL_TIME:
            assert r.finished_at is not None and self.real_start <= r.finished_at <= time.time()
        else:
            assert r.finished_at == t.finished_at, (r.id, r.finished_at, t.finished_at)
        progress = None if r.progress is None and r.progress_message is None else (r.progress, r.progress_message)
        assert progress == t.progress, (r.id, progress, t.progress)


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = property_settings(300, stateful_step_count=40)
TestStoreMachine = pytest.mark.timeout(120)(TestStoreMachine)


# -- values through the whole path: .delay() → file → worker → result ----------------------


def echo_manager(path: str, serializer: str) -> castor.Manager:
    """An eager Manager (each .delay() claims, runs and settles at once, through the
    worker's own code) with a task that returns what it was given."""
    manager = castor.Manager(path, serializer=serializer, eager=True)

    @manager.task(mode="thread", name="echo")
    def echo(*args: Any, **kwargs: Any) -> Any:
        return [list(args), kwargs] if serializer == "json" else (args, kwargs)

    return manager


keywords = st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True), json_values(), max_size=3)


@pytest.mark.timeout(120)
def test_json_values_come_back_from_a_task_as_the_json_normal_form(tmp_path):
    manager = echo_manager(str(tmp_path / "app.db"), "json")
    echo = manager.registry["echo"]

    @property_settings(100)
    @given(st.lists(json_values(), max_size=3).map(tuple), keywords)
    def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        task = echo.delay(*args, **kwargs)
        record = manager.store.get(task.id)
        assert record is not None and record.status == TaskStatus.SUCCESS, record
        assert same(manager.serializer.loads(record.args), json_normal(list(args)))
        assert same(manager.serializer.loads(record.kwargs), json_normal(kwargs))
        assert same(task.join(timeout=5), json_normal([list(args), kwargs]))

    try:
        check()
    finally:
        manager.close()


@pytest.mark.timeout(120)
def test_pickled_values_come_back_from_a_task_with_their_types(tmp_path):
    from tests.strategies import pickle_values

    manager = echo_manager(str(tmp_path / "app.db"), "pickle")
    echo = manager.registry["echo"]

    @property_settings(60)
    @given(st.lists(pickle_values(), max_size=3).map(tuple),
           st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), pickle_values(), max_size=2))
    def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        assert same(echo.delay(*args, **kwargs).join(timeout=5), (args, kwargs))

    try:
        check()
    finally:
        manager.close()


@pytest.mark.timeout(60)
def test_a_refused_argument_enqueues_nothing(tmp_path):
    from tests.strategies import json_refused

    manager = echo_manager(str(tmp_path / "app.db"), "json")
    echo = manager.registry["echo"]

    @property_settings(60)
    @given(st.lists(json_values(strict_keys=True), max_size=2), json_refused)
    def check(args: list[Any], bad: Any) -> None:
        with pytest.raises(SerializationError, match=rf"argument {len(args)} \({type(bad).__name__}\)"):
            echo.delay(*args, bad)
        with pytest.raises(SerializationError, match=r"keyword argument 'bad'"):
            echo.delay(*args, bad=[bad])
        assert manager.store.count(Query()) == 0

    try:
        check()
    finally:
        manager.close()


@pytest.mark.timeout(60)
@given(value=surrogate_text)
@property_settings(20)
def test_a_result_sqlite_cannot_store_fails_the_task_and_the_worker_lives_on(tmp_path_factory, value):
    # Regression: a result holding a lone surrogate passed json.dumps (ensure_ascii=False)
    # and the settle's INSERT raised UnicodeEncodeError in the worker, leaving the task
    # running until its lease expired, to crash the next worker the same way.
    manager = castor.Manager(str(tmp_path_factory.mktemp("s") / "app.db"))
    try:
        @manager.task(mode="thread", name="odd")
        def odd(fine: bool) -> str:
            return "fine" if fine else value

        bad, good = odd.delay(False), odd.delay(True)
        worker = castor.Worker(manager, mode="thread")
        assert worker.step() and worker.step()  # neither step raises
        record = manager.store.get(bad.id)
        assert record is not None and record.status == TaskStatus.FAILED
        assert record.error is not None and record.error["type"] == "castor.errors.SerializationError"
        assert "surrogate" in record.error["message"]
        assert good.join(timeout=5) == "fine"
    finally:
        manager.close()


# -- regressions and findings, as plain tests ------------------------------------------


@pytest.fixture
def store(db_path):
    s = SQLiteStore(db_path)
    yield s
    s.close()


def at(store: SQLiteStore, clock: float) -> SQLiteStore:
    """Leases run on the store's clock (the boot clock); here it reads `clock`."""
    store.clock = lambda: clock
    return store


def new(task_id: str, *, now: float = START, mode: str = "process", eta: float | None = None) -> NewTask:
    return NewTask(id=task_id, name="t", mode=mode, serializer="json", args="[]", kwargs="{}",
                   enqueued_at=now, eta=now if eta is None else eta)


def claim(store: SQLiteStore, owner: str = "w", *, limit: int = 1, lease: float = 10.0, now: float = START,
          mode: str = "process", isolated: bool = False) -> list[TaskRecord]:
    return store.claim(owner, mode=mode, queues=None, limit=limit, lease=lease, now=now, isolated=isolated)


@pytest.mark.timeout(30)
def test_a_drained_owner_that_claims_again_cannot_settle_its_old_attempt(store):
    # Was an xfail: the settle fence was (owner, attempt), and a drain hands the attempt
    # back uncounted (attempts - 1), so the same owner's next claim reused the number and
    # its old attempt's late settle was accepted. Each claim now has its own fencing token.
    store.enqueue([new("a")])
    (first,) = claim(store, now=START)
    store.release_owner("w", count_attempt=False, max_lost=MAX_LOST)  # drained, attempt not counted
    (second,) = claim(store, now=START + 1)
    assert second.attempts == first.attempts  # the attempt number repeats…
    assert second.fence == first.fence + 1  # …the fencing token does not
    late = Settlement("a", "w", first.attempts, TaskStatus.FAILED, error={"type": "old"}, finished_at=START + 2,
                      fence=first.fence)
    assert not store.settle_one(late), "the first attempt's late settle overwrote the running one"
    assert store.settle_one(Settlement("a", "w", second.attempts, TaskStatus.SUCCESS, result="1",
                                       finished_at=START + 2, fence=second.fence))


@pytest.mark.timeout(30)
def test_an_owner_that_stalled_past_its_lease_and_claimed_again_is_fenced_from_its_old_attempt(store):
    at(store, 50.0).enqueue([new("a")])
    (first,) = claim(store, lease=5.0)
    assert len(at(store, 56.0).recover_expired(now=START + 6, max_lost=MAX_LOST)) == 1
    (second,) = claim(store, now=START + 6)
    assert (second.owner, second.attempts, second.fence) == ("w", first.attempts + 1, first.fence + 1)
    assert store.renew([first.claim, second.claim], lease=5.0) == {second.claim}
    assert not store.set_progress("a", first.fence, 0.5, "zombie")
    assert not store.requeue("a", first.fence, count_attempt=True)
    assert store.set_progress("a", second.fence, 0.5, "alive")
    record = store.get("a")
    assert record is not None and (record.status, record.fence, record.progress_message) == (
        TaskStatus.RUNNING, second.fence, "alive")


@pytest.mark.timeout(30)
def test_requeue_of_a_cancelled_task_keeps_its_attempt_as_release_owner_does(store):
    # Found by StoreMachine: requeue(count_attempt=False) of a task with a cancel request
    # ended it cancelled with attempts - 1 (an attempt count going down on a finished
    # task), where a drain's release_owner ends it cancelled with the attempt counted.
    store.enqueue([new("a"), new("b")])
    a, b = claim(store, limit=2)
    store.cancel("a", now=START)
    store.cancel("b", now=START)
    assert store.requeue("a", a.fence, count_attempt=False)
    store.release_owner("w", count_attempt=False, max_lost=MAX_LOST)
    for record in (store.get("a"), store.get("b")):
        assert record is not None
        assert (record.status, record.attempts) == (TaskStatus.CANCELLED, 1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("hand_back", ["lease expired", "worker lost", "drained", "requeued"])
def test_a_task_handed_back_to_the_queue_drops_the_old_attempts_progress(store, hand_back):
    # Found by StoreMachine: progress belongs to the running attempt, and a failed attempt's
    # retry cleared it, but a task returned to pending by lease recovery, release_owner or
    # requeue kept it, so the next attempt showed the lost one's "90%" until its first report.
    store.enqueue([new("a")])
    (rec,) = claim(at(store, 50.0), lease=5.0)
    assert store.set_progress("a", rec.fence, 0.9, "almost")
    if hand_back == "lease expired":
        assert len(at(store, 56.0).recover_expired(now=START + 6, max_lost=MAX_LOST)) == 1
    elif hand_back == "worker lost":
        store.release_owner("w", count_attempt=True, max_lost=MAX_LOST)
    elif hand_back == "drained":
        store.release_owner("w", count_attempt=False, max_lost=MAX_LOST)
    else:
        assert store.requeue("a", rec.fence, count_attempt=True)
    record = store.get("a")
    assert record is not None and record.status == TaskStatus.PENDING
    assert (record.progress, record.progress_message) == (None, None)


@pytest.mark.timeout(30)
def test_a_task_the_store_finishes_itself_honours_its_failure_ttl(store):
    # Its own failure_ttl, else the Manager's default (which a Manager hands its store).
    store.failure_ttl = 30.0
    tasks = {"lost": {"failure_ttl": 60.0}, "cancelled": {"failure_ttl": 60.0}, "lost_default": {},
             "cancelled_default": {}}
    store.enqueue([NewTask(id=i, name="t", mode="process", serializer="json", args="[]", kwargs="{}",
                           enqueued_at=START, eta=START, options=o) for i, o in tasks.items()])
    claim(at(store, 50.0), limit=4, lease=5.0)
    store.cancel("cancelled", now=START + 1)
    store.cancel("cancelled_default", now=START + 1)
    assert len(at(store, 56.0).recover_expired(now=START + 6, max_lost=1)) == 4
    for task_id, status, ttl in (("lost", TaskStatus.FAILED, 60.0), ("cancelled", TaskStatus.CANCELLED, 60.0),
                                 ("lost_default", TaskStatus.FAILED, 30.0),
                                 ("cancelled_default", TaskStatus.CANCELLED, 30.0)):
        record = store.get(task_id)
        assert record is not None and record.status == status
        assert record.expires_at == START + 6 + ttl, f"{task_id}: expires_at {record.expires_at}"
    assert store.purge_expired(now=START + 6 + 45) == 2  # the defaults went first


@pytest.mark.timeout(30)
def test_a_cancelled_task_keeps_its_last_progress_however_it_ends(store):
    # The other half of the fix above (StoreMachine, exploring, caught a first version that
    # cleared it in requeue): a task that ends cancelled keeps its last report, whichever
    # path ends it, as every finished task does.
    store.enqueue([new("a"), new("b")])
    a, b = claim(store, limit=2)
    for rec in (a, b):
        store.cancel(rec.id, now=START)
        assert store.set_progress(rec.id, rec.fence, 0.5, "half")
    assert store.requeue("a", a.fence, count_attempt=False)
    store.release_owner("w", count_attempt=False, max_lost=MAX_LOST)
    for task_id in ("a", "b"):
        record = store.get(task_id)
        assert record is not None and record.status == TaskStatus.CANCELLED
        assert (record.progress, record.progress_message) == (0.5, "half")


@pytest.mark.timeout(30)
def test_a_thread_host_crash_beside_other_tasks_blames_none_and_sets_each_apart(store):
    store.enqueue([new(i, mode="thread") for i in "abc"])
    claim(store, mode="thread", limit=3)
    store.cancel("c", now=START)
    released = {r.id: r for r in store.release_owner("w", count_attempt=True, max_lost=MAX_LOST)}
    # The records as they are after release: a and b set apart, unblamed; c ends cancelled.
    assert {i: (r.status, r.lost, r.attempts, r.isolate) for i, r in released.items()} == {
        "a": (TaskStatus.PENDING, 0, 1, True), "b": (TaskStatus.PENDING, 0, 1, True),
        "c": (TaskStatus.CANCELLED, 0, 1, False)}
    assert {r.id for r in store.list(Query(dirty=True))} == {"a", "b"}
    assert claim(store, mode="thread", limit=3) == []  # an ordinary claim leaves them alone
    assert store.has_due(mode="thread", queues=None, now=START, isolated=True)
    (alone,) = claim(store, "solo", mode="thread", isolated=True)
    assert alone.isolate and alone.attempts == 2
    # Running alone, a crash names it: blamed now.
    (blamed,) = store.release_owner("solo", count_attempt=True, max_lost=MAX_LOST)
    assert (blamed.id, blamed.status, blamed.lost, blamed.isolate) == (alone.id, TaskStatus.PENDING, 1, True)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_crash_is_blamed_on_a_task_that_ran_alone(store, mode):
    store.enqueue([new("t0", mode=mode)])
    claim(store, mode=mode, limit=1)
    released = store.release_owner("w", count_attempt=True, max_lost=MAX_LOST)
    assert [(r.status, r.lost, r.isolate) for r in released] == [(TaskStatus.PENDING, 1, False)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("modes", [("process", "process"), ("thread", "process")])
def test_a_crash_while_holding_a_prefetched_batch_blames_none(store, modes):
    # A process worker claims several short tasks per transaction (castor/worker.py,
    # prefetch) and runs them one by one: when it dies, the database cannot tell which
    # one was running. None is blamed; each runs alone next, which names the culprit.
    store.enqueue([new(f"t{i}", mode=mode) for i, mode in enumerate(modes)])
    for mode in set(modes):
        claim(store, mode=mode, limit=len(modes))
    released = store.release_owner("w", count_attempt=True, max_lost=MAX_LOST)
    assert sorted((r.status, r.lost, r.isolate) for r in released) == [(TaskStatus.PENDING, 0, True)] * len(modes)


@pytest.mark.timeout(30)
def test_after_the_wall_clock_steps_back_a_task_without_an_eta_is_due_and_one_with_an_eta_waits(store):
    store.enqueue([new("now"), new("later", eta=START + 60)])
    back = START - 3600  # NTP, or a VM restored from a snapshot
    assert [r.id for r in claim(store, now=back, limit=2)] == ["now"]
    assert claim(store, now=START + 59, limit=2) == []
    assert [r.id for r in claim(store, now=START + 60, limit=2)] == ["later"]


@pytest.mark.timeout(30)
def test_a_retry_waits_its_delay_even_after_the_wall_clock_stepped_back(store):
    # Found while modelling the due rule for StoreMachine. A task enqueued without an ETA
    # is due whatever the wall clock says, told by eta <= enqueued_at. A failed attempt's
    # retry writes eta = now + delay; once the wall clock has stepped back by more than
    # the delay, that ETA is still <= enqueued_at, so the retry is due at once: its
    # backoff is skipped, and a task retrying against a failing service burns every retry
    # in a row until the wall clock is back past enqueued_at.
    store.enqueue([new("a")])
    (rec,) = claim(store, now=START)
    back = START - 600  # NTP steps the wall clock back ten minutes
    retry = Settlement("a", "w", rec.attempts, TaskStatus.PENDING, error={"type": "Flaky"}, finished_at=back,
                       eta=back + 30, fence=rec.fence)
    assert store.settle_one(retry)
    assert not store.has_due(mode="process", queues=None, now=back + 1), "the retry's 30 s backoff was skipped"
    assert claim(store, now=back + 1) == []
    assert [r.id for r in claim(store, now=back + 30)] == ["a"]
