"""Chaos: a steady load through castord while children and the master are killed,
stopped and signalled at random; then every task must be finished, none lost,
and every task that ran twice must have lost a worker to one of our kills.

    scripts/chaos [--duration 180] [--rate 40] [--seed N]
    scripts/chaos --until-actions 8 --until-tasks 300 [--deadline 90]

The first runs for a fixed time. The second (the short variant the test suite runs,
tests/process/test_chaos.py) runs until it has taken that many chaos actions and
enqueued that many tasks, however long that takes on this machine, up to a deadline:
a run that misses its goal by then is a failed run, never a quietly smaller one.

Each task appends "start TOKEN PID" when it begins and "end TOKEN PID" when its
body returns, to one file (O_APPEND writes of one short line do not interleave).
A task that started more than once is a duplicate; it is explained when every
earlier start ran in a process that we disrupted: SIGKILLed or SIGSTOPped, alive
when we SIGKILLed its master, or drained by TERM/HUP/TTOU while running a daemon
task (which castord requeues by design).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASTORD = str(Path(sys.executable).parent / "castord")

APP = textwrap.dedent('''
    import os, time
    import castor

    manager = castor.Manager(os.environ["CHAOS_DB"])
    LOG = os.environ["CHAOS_EXEC_LOG"]

    def _mark(what, token):
        with open(LOG, "a") as f:
            f.write(f"{what} {token} {os.getpid()}\\n")

    def _work(token, seconds):
        _mark("start", token)
        time.sleep(seconds)
        _mark("end", token)
        return token

    @manager.task(mode="process", name="proc", daemon=False)
    def proc(token, seconds):
        return _work(token, seconds)

    @manager.task(mode="process", name="proc_daemon", daemon=True)
    def proc_daemon(token, seconds):
        return _work(token, seconds)

    @manager.task(mode="thread", name="thread", daemon=False)
    def thread(token, seconds):
        return _work(token, seconds)

    @manager.task(mode="thread", name="thread_daemon", daemon=True)
    def thread_daemon(token, seconds):
        return _work(token, seconds)
''')

# Fast failure detection: a stopped child is noticed after 1.5 s of silence. castord
# wants the lease at least 1.5 x (heartbeat timeout + interval + 2 s) = 5.6 s, so that a
# live child's lease never runs out while the master is still deciding it is dead.
CASTORD_ARGS = ("--workers", "2", "--threads", "4", "--lease", "6", "--heartbeat-interval", "0.25",
                "--heartbeat-timeout", "1.5", "--graceful-timeout", "5", "--log-format", "json")
ACTIONS = ("kill_child", "kill_child", "kill_child", "stop_child", "kill_master", "term", "hup", "ttin",
           "ttou")


@dataclass(frozen=True)
class Goal:
    """Run until at least this much happened (however long it takes), up to `deadline` s."""

    actions: int = 8  # chaos actions taken (of any kind)
    kills: int = 2  # of which SIGKILLs or SIGSTOPs of a child or the master
    tasks: int = 300  # tasks enqueued
    deadline: float = 90.0

    def shortfall(self, report: Report, tasks: int) -> str | None:
        """What is still missing, or None once the goal is reached."""
        missing = []
        if sum(report.actions.values()) < self.actions:
            missing.append(f"actions {sum(report.actions.values())}/{self.actions}")
        if report.kills < self.kills:
            missing.append(f"kills {report.kills}/{self.kills}")
        if tasks < self.tasks:
            missing.append(f"tasks {tasks}/{self.tasks}")
        return ", ".join(missing) or None


@dataclass
class Report:
    tasks: int = 0
    kills: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)  # not finished, or missing
    worker_lost_failures: int = 0  # failed after losing their worker max_lost times (terminal)
    duplicates: int = 0
    unexplained: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    load_s: float = 0.0  # of load and disruption
    settle_s: float = 0.0  # from the end of the load until every task had finished
    goal_missed: str | None = None  # a goal run that reached its deadline first: what was missing

    @property
    def ok(self) -> bool:
        return not self.lost and not self.unexplained and self.goal_missed is None

    def line(self) -> str:
        missed = f" GOAL MISSED ({self.goal_missed})" if self.goal_missed else ""
        return (f"chaos:{missed} tasks={self.tasks} kills={self.kills} lost={len(self.lost)} "
                f"duplicates={self.duplicates} unexplained={len(self.unexplained)} "
                f"failed_worker_lost={self.worker_lost_failures} wall={self.wall_s:.1f}s load={self.load_s:.1f}s "
                f"settle={self.settle_s:.1f}s "
                f"actions={json.dumps(self.actions, sort_keys=True)}")


class Chaos:
    def __init__(self, workdir: Path, seed: int, rate: float, log=print):  # noqa: ANN001
        self.dir = workdir
        self.rng = random.Random(seed)
        self.load_rng = random.Random(seed + 1)  # the producer thread's own
        self.rate = rate
        self.log = log
        self.db = str(workdir / "chaos.db")
        self.exec_log = workdir / "exec.log"
        (workdir / "chaosapp.py").write_text(APP)
        self.env = {**os.environ, "PYTHONPATH": f"{workdir}{os.pathsep}{REPO}", "CHAOS_DB": self.db,
                    "CHAOS_EXEC_LOG": str(self.exec_log)}
        os.environ.update(CHAOS_DB=self.db, CHAOS_EXEC_LOG=str(self.exec_log))
        sys.path.insert(0, str(workdir))
        sys.modules.pop("chaosapp", None)
        import chaosapp  # noqa: PLC0415 - generated per run

        self.app = chaosapp
        self.masters: list[subprocess.Popen[bytes]] = []
        self.stopped: set[int] = set()  # SIGSTOPped pids, to SIGKILL at the end if still there
        self.disrupted: set[int] = set()
        self.tokens: dict[str, str] = {}  # token -> task id
        self.report = Report()

    # -- castord ------------------------------------------------------------------

    @property
    def master(self) -> subprocess.Popen[bytes] | None:
        live = [m for m in self.masters if m.poll() is None]
        return live[-1] if live else None

    def start_master(self) -> None:
        sock_path = str(self.dir / f"notify-{len(self.masters)}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        sock.settimeout(30)
        log_file = self.dir / "castord.log"
        proc = subprocess.Popen([CASTORD, "start", "chaosapp:manager", *CASTORD_ARGS, "--log-file", str(log_file)],
                                cwd=self.dir, env={**self.env, "NOTIFY_SOCKET": sock_path},
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.masters.append(proc)
        try:
            while b"READY=1" not in sock.recv(4096):
                pass
        finally:
            sock.close()

    def descendants(self, pid: int) -> list[int]:
        out, frontier = [], [pid]
        while frontier:
            current = frontier.pop()
            try:
                kids = [int(k) for k in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
            except OSError:
                kids = []
            out.extend(kids)
            frontier.extend(kids)
        return out

    def workers(self, master: int) -> list[int]:
        """Process children and thread hosts (not the fork server) of our master."""
        found = []
        for pid in self.descendants(master):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"process-worker" in title or b"thread-host" in title:
                found.append(pid)
        return found

    # -- load -----------------------------------------------------------------------

    def produce(self, stop: threading.Event) -> None:
        kinds = [self.app.proc, self.app.proc_daemon, self.app.thread, self.app.thread_daemon]
        n = 0
        while not stop.is_set():
            fn = kinds[n % len(kinds)]
            seconds = 2.0 if n % 97 == 0 else self.load_rng.uniform(0, 0.1)  # now and then a long one
            token = f"t{n}"
            self.tokens[token] = fn.delay(token, seconds).id
            n += 1
            stop.wait(1 / self.rate)

    def disrupt(self, duration: float | None, goal: Goal | None, interval: tuple[float, float]) -> None:
        """Act at random intervals: for `duration` seconds, or until `goal` is reached
        (recording what was missing if its deadline comes first)."""
        end = time.monotonic() + (goal.deadline if goal is not None else duration or 0.0)
        while True:
            if goal is not None and goal.shortfall(self.report, len(self.tokens)) is None:
                return
            if time.monotonic() >= end:
                if goal is not None:
                    self.report.goal_missed = (f"after {goal.deadline:g} s: "
                                               f"{goal.shortfall(self.report, len(self.tokens))}")
                return
            time.sleep(self.rng.uniform(*interval))
            self.act()

    # -- disruption -------------------------------------------------------------------

    def act(self) -> None:
        master = self.master
        if master is None:
            self.start_master()
            return
        action = self.rng.choice(ACTIONS)
        workers = self.workers(master.pid)
        if action in ("kill_child", "stop_child") and not workers:
            return
        self.report.actions[action] = self.report.actions.get(action, 0) + 1
        if action == "kill_child":
            victim = self.rng.choice(workers)
            self.disrupted.add(victim)
            self.report.kills += 1
            os.kill(victim, signal.SIGKILL)
        elif action == "stop_child":
            victim = self.rng.choice(workers)
            self.disrupted.add(victim)
            self.stopped.add(victim)
            self.report.kills += 1
            os.kill(victim, signal.SIGSTOP)  # castord must notice the silence and replace it
        elif action == "kill_master":
            family = self.descendants(master.pid)
            self.disrupted.update(family)
            self.report.kills += 1
            os.kill(master.pid, signal.SIGKILL)
            # Its children exit on their own once they find the master gone, but a
            # SIGSTOPped one never looks: with nobody left to kill it, it would hold
            # its SQLite locks for good. Killing it too is what a host crash does.
            for pid in self.stopped.intersection(family):
                os.kill(pid, signal.SIGKILL)
            master.wait(timeout=10)
            self.start_master()
        elif action == "term":
            self.disrupted.update(workers)  # their daemon tasks are requeued, by design
            master.send_signal(signal.SIGTERM)
            master.wait(timeout=60)
            self.start_master()
        elif action == "hup":
            self.disrupted.update(workers)  # the old generation drains
            master.send_signal(signal.SIGHUP)
        elif action == "ttin":
            master.send_signal(signal.SIGTTIN)
        elif action == "ttou":
            self.disrupted.update(workers)  # we do not know which one it retires
            master.send_signal(signal.SIGTTOU)

    # -- the verdict --------------------------------------------------------------------

    def wait_finished(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.master is None:
                self.start_master()
            if self.unfinished() == 0:
                return
            time.sleep(0.2)

    def unfinished(self) -> int:
        conn = sqlite3.connect(self.db, timeout=30)
        try:
            return conn.execute(
                "SELECT count(*) FROM castor_tasks WHERE status IN ('pending', 'running')").fetchone()[0]
        finally:
            conn.close()

    def judge(self) -> None:
        conn = sqlite3.connect(self.db, timeout=30)
        try:
            rows = {r[0]: r[1:] for r in conn.execute("SELECT id, status, error FROM castor_tasks")}
        finally:
            conn.close()
        starts: dict[str, list[int]] = {}
        for line in self.exec_log.read_text().splitlines():
            what, token, pid = line.split()
            if what == "start":
                starts.setdefault(token, []).append(int(pid))
        self.report.tasks = len(self.tokens)
        for token, task_id in self.tokens.items():
            status, error = rows.get(task_id, (None, None))
            if status not in ("success", "failed", "cancelled"):
                self.report.lost.append(f"{token} {task_id} {status}")
            elif status == "failed":
                if "WorkerLost" in (error or ""):
                    self.report.worker_lost_failures += 1
                else:
                    self.report.lost.append(f"{token} {task_id} failed: {(error or '')[:200]}")
            runs = starts.get(token, [])
            if status == "success" and not runs:
                self.report.lost.append(f"{token} {task_id} success without running")
            if len(runs) > 1:
                self.report.duplicates += 1
                if any(pid not in self.disrupted for pid in runs[:-1]):
                    self.report.unexplained.append(f"{token} {task_id} ran in {runs}")

    def cleanup(self) -> None:
        for master in self.masters:
            if master.poll() is None:
                master.send_signal(signal.SIGTERM)
                try:
                    master.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    master.kill()
                    master.wait(timeout=10)
        for pid in self.stopped:  # a stopped orphan of a killed master would stay forever
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.app.manager.close()
        sys.path.remove(str(self.dir))


def run(duration: float | None = None, rate: float = 40.0, seed: int | None = None,
        interval: tuple[float, float] = (0.5, 2.0), workdir: Path | None = None, log=print,  # noqa: ANN001
        goal: Goal | None = None) -> Report:
    """Load and disruption for `duration` seconds, or until `goal` (see Goal); then
    wait for every task to finish and judge. The report's `ok` is False if a task was
    lost, a duplicate is unexplained, or the goal was not reached by its deadline."""
    if (duration is None) == (goal is None):
        raise ValueError("give run() either duration= or goal=")
    seed = random.randrange(1 << 30) if seed is None else seed
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="castor-chaos-")) if workdir is None else workdir
    what = (f"{duration:g} s of load" if goal is None else
            f"load until {goal.actions} actions ({goal.kills} kills) and {goal.tasks} tasks, "
            f"at most {goal.deadline:g} s")
    log(f"chaos: seed {seed}, {what} at {rate:g} tasks/s, in {workdir}")
    chaos = Chaos(workdir, seed, rate, log)
    started = time.monotonic()
    try:
        chaos.start_master()
        load_started = time.monotonic()
        stop = threading.Event()
        producer = threading.Thread(target=chaos.produce, args=(stop,), daemon=True)
        producer.start()
        try:
            chaos.disrupt(duration, goal, interval)
        finally:
            stop.set()
            producer.join()
        load_ended = time.monotonic()
        chaos.report.load_s = load_ended - load_started
        chaos.wait_finished(timeout=120)
        chaos.report.settle_s = time.monotonic() - load_ended
        chaos.report.wall_s = time.monotonic() - started
        chaos.judge()
    finally:
        chaos.cleanup()
    report = chaos.report
    for problem in (report.lost + report.unexplained)[:20]:
        log(f"chaos: PROBLEM {problem}")
    log(report.line())
    if own_dir and report.ok:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of load and disruption (default 180, unless --until-... is given)")
    parser.add_argument("--until-actions", type=int, default=None, metavar="N",
                        help="instead: run until N chaos actions were taken (and --until-tasks enqueued)")
    parser.add_argument("--until-tasks", type=int, default=None, metavar="M")
    parser.add_argument("--until-kills", type=int, default=None, metavar="K")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds a --until-... run may take before it counts as failed (default 90)")
    parser.add_argument("--rate", type=float, default=40, help="tasks enqueued per second")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    until = (args.until_actions, args.until_tasks, args.until_kills, args.deadline)
    if any(v is not None for v in until):
        if args.duration is not None:
            parser.error("--duration runs for a fixed time; --until-... runs until a goal: give one or the other")
        defaults = Goal()
        goal = Goal(actions=defaults.actions if args.until_actions is None else args.until_actions,
                    kills=0 if args.until_kills is None else args.until_kills,
                    tasks=0 if args.until_tasks is None else args.until_tasks,
                    deadline=defaults.deadline if args.deadline is None else args.deadline)
        report = run(rate=args.rate, seed=args.seed, goal=goal)
    else:
        report = run(180 if args.duration is None else args.duration, args.rate, args.seed)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
