"""What a stopped castord left running: processes by session and process group, from /proc;
and killing a set of processes as one, as the kernel's OOM killer or cgroup.kill does.

Zombies are not counted: a dead process whose parent is gone waits for pid 1 to
reap it, and on some machines (containers, micro-VMs) pid 1 never does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str
    pgrp: int
    session: int
    cmdline: str


def live_processes() -> list[Proc]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone meanwhile
        # The command name may hold spaces and parentheses: split after the last ")".
        fields = stat[stat.rindex(")") + 2:].split()
        state, pgrp, session = fields[0], int(fields[2]), int(fields[3])
        if state in ("Z", "X"):
            continue
        out.append(Proc(int(entry), state, pgrp, session, cmdline))
    return out


def in_session(sid: int) -> list[Proc]:
    """Live processes of session `sid` (a castord started with start_new_session=True)."""
    return [p for p in live_processes() if p.session == sid]


def in_groups(pgids: set[int], sid: int) -> list[Proc]:
    """Live processes in any of these process groups that belong to session `sid`.

    The session check keeps a reused number (another user's shell job) out.
    """
    return [p for p in live_processes() if p.pgrp in pgids and p.session == sid]


def alive(pid: int) -> bool:
    """True while `pid` is a live (not zombie) process."""
    return state(pid) not in (None, "Z", "X")


def state(pid: int) -> str | None:
    """Its state letter in /proc (R, S, T, Z, ...), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[0]


def kill_together(pids: set[int], timeout: float = 10.0) -> None:
    """SIGKILL `pids` so that none of them acts on another's death.

    Killing one by one leaves the rest a moment to react (a master that requeues a
    dead child's tasks, a sibling that claims one and runs it again). So: SIGSTOP
    every one, wait until each is stopped (a stopped process runs no code of its
    own), then SIGKILL them; the kernel wakes a stopped process only to die.
    """
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # one that ended since the listing
            os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    try:
        while running := [pid for pid in pids if state(pid) not in (None, "T", "t", "Z", "X")]:
            if time.monotonic() > deadline:  # one in uninterruptible sleep, say
                raise RuntimeError(f"processes {running} did not stop within {timeout} s of SIGSTOP")
            time.sleep(0.005)
    finally:  # killed even then: none is left stopped, holding its sessions and leases
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
