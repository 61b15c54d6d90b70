"""A chord's tasks, and a worker process that runs them (tests/process/test_workflow_fanin.py).

    python -m tests.fanin URL DIR NUMBER

Each process opens its own store on URL, registers the tasks, writes DIR/ready-NUMBER,
waits for DIR/go (the workflow's id), then runs a castor.Worker until that workflow has
ended. Every run of the callback appends its pid to DIR/callback-runs.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from pathlib import Path

import castor

DEADLINE_SECONDS = 240.0
MEET_DIR = "CASTOR_FANIN_DIR"  # where the workers' first members meet (set by main)


def _meet_another_process() -> None:
    """A process's first member waits until a member runs in another process too, so
    that members are surely settled by several processes (however the scheduler favours
    one): the others meanwhile claim what is left. Once met, no member waits."""
    directory = os.environ.get(MEET_DIR)
    if not directory:
        return  # not a worker of this test (the test process only defines the tasks)
    here = Path(directory)
    mine = here / f"member-{os.getpid()}"
    if (here / "met").exists():
        return
    mine.touch()
    deadline = time.monotonic() + 60
    while len(list(here.glob("member-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    (here / "met").touch()


def define(manager: castor.Manager) -> tuple[castor.TaskFunction, castor.TaskFunction]:
    @manager.task(mode="thread", name="fanin.member")
    def member(index):
        _meet_another_process()
        return [index, os.getpid()]

    @manager.task(mode="thread", name="fanin.callback")
    def callback(results, runs_file):
        with open(runs_file, "a") as f:  # one line per run: the test counts them
            f.write(f"{os.getpid()}\n")
        return {"count": len(results), "in_order": [r[0] for r in results] == list(range(len(results))),
                "pids": sorted({r[1] for r in results})}

    return member, callback


def main(url: str, directory: str, number: str) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks before it stops a stuck one
    os.environ[MEET_DIR] = directory
    manager = castor.Manager(url)
    define(manager)
    here = Path(directory)
    (here / f"ready-{number}").write_text(str(os.getpid()))
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not (here / "go").exists():
        if time.monotonic() > deadline:
            return 2
        time.sleep(0.01)
    workflow_id = (here / "go").read_text().strip()
    worker = castor.Worker(manager, mode="thread", threads=4)

    def stop_when_ended() -> None:
        while time.monotonic() < deadline:
            try:
                record = manager.store.workflow(workflow_id)
            except Exception as exc:  # noqa: BLE001 - e.g. locked by the other writers: look again
                print(f"fanin {number}: reading the workflow: {exc!r}", file=sys.stderr, flush=True)
                record = None
            if record is not None and record.state.finished:
                break
            time.sleep(0.1)
        worker.stop()

    threading.Thread(target=stop_when_ended, daemon=True).start()
    worker.run()
    # Where a process that does not stop was (CI saw one twice, its stack dump empty: after
    # these lines, it hung in the interpreter's exit, where faulthandler is gone).
    print(f"fanin {number}: the worker returned", flush=True)
    manager.close()
    print(f"fanin {number}: the manager closed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
