"""What the workflow durability test (tests/system/test_workflow_durability.py) runs on:
castords it can SIGKILL and start again, its chaos loop, and its side-effect log.

Castords are tests/process/test_castord.py's `Castord`, each started in a session of its
own (so its processes are found by session id, tests/process/leftovers.py), with a log
file each: a master started again after a kill is a new `Castord` (a new log), so no
castord's log is lost to a restart.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from castord.children import PROCESS_WORKER, THREAD_HOST
from tests.chaos import identity
from tests.process.leftovers import in_session
from tests.process.test_castord import Castord

APP = "tests.workflow_chaos_app:manager"
READY_TIMEOUT = 60.0
# A child younger than this is left alone: one killed before it told its master it was
# ready counts as a boot failure, and castord stops after a few in a row.
CHILD_MIN_AGE = 1.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _age(pid: int) -> float | None:
    """Seconds since `pid` started (None if it is gone)."""
    ident = identity(pid)
    if ident is None:
        return None
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - int(ident.split("@")[1]) / CLOCK_TICKS


@dataclass
class Kill:
    kind: str  # "child" or "master"
    castord: str  # the slot's name
    process: str  # pid@starttime
    title: str
    at: float  # monotonic seconds since the chaos began


class Fleet:
    """The test's castords by slot name ("a", "b"): each slot has one live master at a
    time; a killed one is started again in its slot."""

    def __init__(self, workdir: Path, args: tuple[str, ...], env: dict[str, str]):
        self.workdir = workdir
        self.args = args
        self.env = env
        self.live: dict[str, Castord] = {}
        self.started: list[Castord] = []  # every master ever started, for their logs

    def start(self, slot: str) -> Castord:
        d = Castord(self.workdir, f"castord-{slot}-{len(self.started)}")
        self.started.append(d)
        self.live[slot] = d
        d.start(*self.args, app=APP, env=self.env)
        d.wait_note("READY=1", timeout=READY_TIMEOUT)
        return d

    def workers(self, slot: str) -> dict[int, str]:
        """The slot's process children and thread host old enough to kill: pid -> title.
        Found in its master's session, so a pid is always one this test started."""
        master = self.live[slot]
        found = {}
        for proc in in_session(master.pid):
            if proc.pid == master.pid or "booting" in proc.cmdline:
                continue
            if PROCESS_WORKER in proc.cmdline or THREAD_HOST in proc.cmdline:
                age = _age(proc.pid)
                if age is not None and age >= CHILD_MIN_AGE:
                    found[proc.pid] = proc.cmdline
        return found

    def kill_child(self, slot: str, rng: random.Random) -> tuple[str, str] | None:
        workers = self.workers(slot)
        if not workers:
            return None
        pid = rng.choice(sorted(workers))
        ident = identity(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return ident or str(pid), workers[pid]

    def kill_master(self, slot: str) -> tuple[str, str]:
        """SIGKILL the slot's master, wait for its exit, start a new one there."""
        master = self.live[slot]
        ident = identity(master.pid) or str(master.pid)
        master.signal(signal.SIGKILL)
        master.wait_exit(timeout=30)
        self.start(slot)
        return ident, "castord: master"

    def events(self, name: str) -> list[dict]:
        return [e for d in self.started for e in d.events(name)]

    def stop(self) -> list[str]:
        """Stop every master (Castord.stop: SIGQUIT, then SIGKILL), then SIGKILL what is
        left in their sessions (children of a killed master that outlived it). Returns
        what was left."""
        for d in self.started:
            d.stop()
        left = []
        deadline = time.monotonic() + 10
        while True:
            procs = [p for d in self.started for p in in_session(d.pid)]
            if not procs or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for proc in procs:
            left.append(f"{proc.pid} {proc.cmdline}")
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left


@dataclass
class Chaos:
    """SIGKILLs at random intervals: a random worker of a random castord, or its master
    (started again at once). Seeded; `kills` records what was done."""

    fleet: Fleet
    seed: int
    interval: tuple[float, float] = (0.3, 1.2)
    master_weight: float = 0.25  # the share of kills that hit a master
    on_kill: Callable[[int], None] = lambda n: None
    kills: list[Kill] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.began = time.monotonic()

    def run(self, done: Callable[[], bool], *, min_kills: int, deadline: float) -> None:
        """Kill until done() and at least `min_kills` kills, of each kind at least one;
        fail the test (naming the seed) if that takes more than `deadline` seconds."""
        end = self.began + deadline
        while not (done() and self.enough(min_kills)):
            if time.monotonic() > end:
                pytest.fail(f"chaos (seed {self.seed}): not done {deadline:g} s after it began, "
                            f"{len(self.kills)} kills: {self.describe()}")
            time.sleep(self.rng.uniform(*self.interval))
            self.kill_one(min_kills)

    def enough(self, min_kills: int) -> bool:
        kinds = {k.kind for k in self.kills}
        return len(self.kills) >= min_kills and kinds == {"child", "master"}

    def kill_one(self, min_kills: int) -> None:
        slot = self.rng.choice(sorted(self.fleet.live))
        kinds = {k.kind for k in self.kills}
        if len(self.kills) + 1 >= min_kills and kinds != {"child", "master"}:
            kind = "master" if "master" not in kinds else "child"  # the kind still missing
        else:
            kind = "master" if self.rng.random() < self.master_weight else "child"
        if kind == "master":
            killed = self.fleet.kill_master(slot)
        else:
            killed = self.fleet.kill_child(slot, self.rng)
            if killed is None:
                return  # none old enough yet (a master just started): next time
        self.kills.append(Kill(kind, slot, *killed, at=round(time.monotonic() - self.began, 2)))
        self.on_kill(len(self.kills))

    def describe(self) -> str:
        return "; ".join(f"{k.at}s {k.kind} {k.castord} {k.process} ({k.title.strip()})" for k in self.kills)


@dataclass
class Run:
    """One start of a task in the side-effect log: its line number and claim."""

    line: int
    fence: int
    detail: str  # a start: its process (pid@starttime); an end: its note


@dataclass
class SideEffects:
    """The side-effect log (tests/workflow_chaos_app.py), read once at the end."""

    starts: dict[str, list[Run]] = field(default_factory=dict)
    ends: dict[str, list[Run]] = field(default_factory=dict)  # detail: the end's note

    @classmethod
    def read(cls, path: Path) -> SideEffects:
        log = cls()
        if not path.exists():
            return log
        for n, line in enumerate(path.read_text().splitlines()):
            what, task_id, fence, rest = line.split(" ", 3)
            into = log.starts if what == "start" else log.ends
            into.setdefault(task_id, []).append(Run(n, int(fence), rest))
        return log
