"""Chaos: a steady load through castord while its processes are killed, stopped,
stalled past their lease and signalled at random, the wall clock is stepped, and the
load itself forks and kills its own workers; then every task must be finished, none
lost, and every task that ran twice must be explained by one of those disruptions.

    scripts/chaos [--duration 180] [--rate 40] [--seed N]
    scripts/chaos --until-actions 8 --until-tasks 300 [--until-kind stall_group=1] [--deadline 90]

The first runs for a fixed time. The second (the short variant the test suite runs,
tests/process/test_chaos.py) runs until it has taken that many chaos actions (and of
each --until-kind that many) and enqueued that many tasks, however long that takes on
this machine, up to a deadline: a run that misses its goal by then is a failed run,
never a quietly smaller one.

The load
--------
A producer process (never this one: it must read the stepped clock) runs two threads
that enqueue in a loop, while its main thread forks a child now and then (while those
threads write) that enqueues three tasks and leaves. Every id a `.delay()` returned,
in a thread or a forked child, is appended to ids.txt with its token. The tasks:
process and thread tasks, daemon and not, a 2 s one now and then; every 50th a
process task that forks (its forked copy leaves through `sys.exit(0)`, the task waits
for it and returns); every 150th, 75 later, a process or a thread task (in turn) that
calls `os._exit(c)`, c among castord's own exit codes 3..7 (in turn), on its first
attempt only (a marker file per token). Each of those crashes a child young, so
castord's restart backoff (up to 30 s for a slot whose children keep dying young)
slows the run down: the settle waits while tasks keep finishing. No task has a countdown or an ETA: a clock step must not
delay any of them.

Each task appends one line to exec.log (O_APPEND writes of one short line do not
interleave): "start TOKEN P" when it begins, "end TOKEN P" when its body returns,
"exit TOKEN P CODE MODE" just before its os._exit, "fork TOKEN P" in its forked copy,
where P is the process as pid@starttime (pids are reused within a long run; chaos
records what it did to a process under the same name).

Disruptions, and what each explains (the causes of a pid)
---------------------------------------------------------
    kill_child          SIGKILL a process child or the thread host       that pid: killed
    stop_child          SIGSTOP one and leave it (castord replaces it)   that pid: stopped
    stall_child         SIGSTOP one for lease + 1..3 s, then SIGCONT     that pid: stopped
    stall_master_child  SIGSTOP the master and one child as long         that child: stopped
    stall_group         SIGSTOP every process group of castord's         every one: stopped
                        (master, fork server, children, their forks)
    kill_master         SIGKILL the master (and a stopped child), restart  its descendants: killed
    term                TERM, wait for the exit, restart                 its workers: drained
    hup, ttou           reload, shrink                                   its workers: drained
    ttin                grow (up to 5 process children)                  nothing
    clock_step          every process of the run (master, children, fork server, producer)
                        reads time.time() with a new offset, 5 min..1 h from the true time,
                        alternately before and after it (a step back, then forward)  nothing
    signal_burst        2..6 of TERM INT QUIT HUP TTIN TTOU USR1 to the master, up to 0.3 s
                        apart (half of them 0, 2 or 20 ms apart); a master that exits is
                        restarted and the burst goes on. With a TERM, INT, QUIT, HUP or TTOU
                        among them: every worker alive from the first of those until 0.5 s
                        after the burst (seen then, or started meanwhile: a reload's child
                        may claim, run and be drained between two looks): drained.
                        Without: nothing.
    (load) a task's os._exit                                         that pid: exited

"Workers" are the process children and the thread host, not the fork server and not a
task's forked copy (chaos never picks those as victims). A drain explains a rerun
because castord requeues daemon tasks at a drain by design (and a fast stop, QUIT or a
second TERM, kills children). Nothing else explains anything: not a clock step, a fork
(of a task or of the producer), TTIN or USR1.

The verdict
-----------
* lost: a recorded id whose task is not `success` at the end (still pending or
  running, missing, cancelled, failed for a reason other than WorkerLost), or a success
  that never started.
* duplicate: a task that started more than once. It is explained when every start but
  the last ran in a pid with a cause above (counted by the cause of the first); else
  it is unexplained.
* failed WorkerLost (castord gave up after 3 losses blamed on the task): explained only
  when at least 3 of its starts ran in pids we killed or stopped, or (a task that
  exits) in the pid of its own exit. A neighbour of an exiting thread task is never
  blamed (it reruns alone, `task.isolated`), and a drain never counts as a loss: any
  other WorkerLost is unexplained.
* faults: a master that exited when nobody asked it to, or with anything but code 0
  when asked (TERM/INT/QUIT: killed by a signal on its way out is a fault); one still
  running 20 s after TERM/INT/QUIT; one not ready 30 s after it started; in castord's
  log: child.boot_failed, castord.boot_failures or child.database_error (the app always
  boots and the database is fine: it believed a task's exit code), a child ended by a
  task's os._exit logged as a planned exit while neither it nor its master drained, a
  child spawned by a master that was draining or stopping; a process of the run still
  there 10 s after every master exited; a producer's forked child that failed; a
  `.delay()` that raised.

ok means: nothing lost, no unexplained duplicate or WorkerLost, no fault, goal reached.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests import clockstep

REPO = Path(__file__).resolve().parent.parent
CASTORD = str(Path(sys.executable).parent / "castord")

APP = textwrap.dedent('''
    import os, signal, sys, time
    import castor

    manager = castor.Manager(os.environ["CHAOS_DB"])
    LOG = os.environ["CHAOS_EXEC_LOG"]
    MARKS = os.environ["CHAOS_MARKS"]

    def _mark(*what):
        with open(LOG, "a") as f:
            f.write(" ".join(str(w) for w in what) + "\\n")

    _ME = [None, None]

    def _me():
        """This process as pid@starttime: a pid alone may be reused during a long run."""
        pid = os.getpid()
        if _ME[0] != pid:
            with open(f"/proc/{pid}/stat") as f:
                _ME[:] = [pid, f"{pid}@{f.read().rsplit(')', 1)[1].split()[19]}"]
        return _ME[1]

    def _work(token, seconds):
        _mark("start", token, _me())
        time.sleep(seconds)
        _mark("end", token, _me())
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

    @manager.task(mode="process", name="proc_fork", daemon=False)
    def proc_fork(token, seconds):
        _mark("start", token, _me())
        pid = os.fork()
        if pid == 0:  # the forked copy: castor must let it leave, never run its loop
            _mark("fork", token, _me())
            sys.exit(0)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise RuntimeError(f"its forked copy {pid} was still there after 30 s")
            time.sleep(0.005)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"its forked copy {pid} exited {code}")
        time.sleep(seconds)
        _mark("end", token, _me())
        return token

    def _exit_once(token, code, mode):
        _mark("start", token, _me())
        try:
            os.close(os.open(os.path.join(MARKS, token), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:  # a rerun: succeed
            _mark("end", token, _me())
            return token
        _mark("exit", token, _me(), code, mode)
        os._exit(code)

    @manager.task(mode="process", name="proc_exit", daemon=False)
    def proc_exit(token, code):
        return _exit_once(token, code, "process")

    @manager.task(mode="thread", name="thread_exit", daemon=False)
    def thread_exit(token, code):
        return _exit_once(token, code, "thread")
''')

PRODUCER = textwrap.dedent('''
    """chaos's producer: two threads enqueue, the main thread forks children that enqueue."""
    import itertools, os, random, signal, sys, threading, time, traceback
    import chaosapp as app

    IDS, FORKS, STOP = sys.argv[1], sys.argv[2], sys.argv[3]
    RATE, SEED = float(sys.argv[4]), int(sys.argv[5])
    EXIT_CODES = (3, 4, 5, 6, 7)
    PLAIN = [app.proc, app.proc_daemon, app.thread, app.thread_daemon]
    counter = itertools.count()

    def write(path, line):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\\n").encode())
        finally:
            os.close(fd)

    def stopping():
        return os.path.exists(STOP)

    def pick(n, rng):
        if n % 50 == 0:
            return "proc_fork", app.proc_fork, 0.01
        if n % 150 == 75:
            k = n // 150
            fn = (app.proc_exit, app.thread_exit)[k % 2]
            return fn.name, fn, EXIT_CODES[k % 5]
        fn = PLAIN[n % 4]
        return fn.name, fn, 2.0 if n % 97 == 0 else rng.uniform(0, 0.1)

    def enqueue(seed):
        rng = random.Random(seed)
        while not stopping():
            n = next(counter)
            token = f"t{n}"
            kind, fn, arg = pick(n, rng)
            try:
                write(IDS, f"{token} {fn.delay(token, arg).id} {kind}")
            except Exception as exc:
                write(FORKS, f"error {token} {type(exc).__name__}: {str(exc)[:200]!r}")
            time.sleep(2 / RATE)

    def child(n):
        """A forked child: enqueue three tasks, record their ids, leave."""
        signal.alarm(20)  # stuck for good (a phantom lock): die of SIGALRM, a failure
        try:
            for i, fn in enumerate((app.proc, app.thread, app.thread_daemon)):
                token = f"f{n}.{i}"
                write(IDS, f"{token} {fn.delay(token, 0.01).id} forked")
            code = 0
        except BaseException:
            sys.stderr.write(f"fork {n}: {traceback.format_exc()}")
            code = 1
        sys.stderr.flush()
        os._exit(code)

    threads = [threading.Thread(target=enqueue, args=(SEED + i,)) for i in range(2)]
    for t in threads:
        t.start()
    rng = random.Random(SEED)
    forks = 0
    while not stopping():
        time.sleep(rng.uniform(0.2, 1.5))
        if stopping():
            break
        forks += 1
        pid = os.fork()
        if pid == 0:
            child(forks)
        _, status = os.waitpid(pid, 0)
        write(FORKS, f"fork {forks} {pid} {os.waitstatus_to_exitcode(status)}")
    for t in threads:
        t.join()
    app.manager.close()
''')

# Every process started with this on its PYTHONPATH reads the wall clock with an
# offset kept in an 8-byte file that chaos changes (a clock step seen by the whole host).
SITECUSTOMIZE = clockstep.sitecustomize("CHAOS_CLOCK_FILE")

# Fast failure detection: a stopped child is noticed after 1.5 s of silence. castord
# wants the lease at least 1.5 x (heartbeat timeout + interval + 2 s) = 5.6 s, so that a
# live child's lease never runs out while the master is still deciding it is dead.
LEASE = 6.0
GRACEFUL = 5.0
CASTORD_ARGS = ("--workers", "2", "--threads", "4", "--lease", f"{LEASE:g}", "--heartbeat-interval", "0.25",
                "--heartbeat-timeout", "1.5", "--graceful-timeout", f"{GRACEFUL:g}", "--log-format", "json")
READY_TIMEOUT = 30.0
EXIT_TIMEOUT = 20.0  # after TERM/INT/QUIT: a drain is at most GRACEFUL, then a fast stop
MAX_PROCESS_CHILDREN = 5  # TTIN beyond this is not sent (a burst sends TTOU instead)

# Chaos actions and their weights (see the module docstring).
ACTIONS = {"kill_child": 3, "stop_child": 1, "stall_child": 1, "stall_master_child": 0.5, "stall_group": 0.5,
           "kill_master": 1, "term": 1, "hup": 1, "ttin": 1, "ttou": 1, "clock_step": 2, "signal_burst": 1.5}
KILLS = {"kill_child", "stop_child", "stall_child", "stall_master_child", "stall_group", "kill_master"}
BURST_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
                 signal.SIGUSR1)
DRAINING = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTOU}
STOPPING = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}
# Causes of a pid, strongest first; the first two may count as a loss (blame).
CAUSES = ("killed", "stopped", "exited", "drained")
BLAME = {"killed", "stopped"}


@dataclass(frozen=True)
class Goal:
    """Run until at least this much happened (however long it takes), up to `deadline` s."""

    actions: int = 8  # chaos actions taken (of any kind)
    kills: int = 2  # of which SIGKILLs, SIGSTOPs or stalls of a child or the master
    tasks: int = 300  # tasks enqueued
    deadline: float = 90.0
    # At least so many of a kind (a key of Report.counts(): an action, sig_TERM,
    # clock_back, exit_thread, producer_fork, ...).
    kinds: tuple[tuple[str, int], ...] = ()

    def shortfall(self, report: Report) -> str | None:
        """What is still missing, or None once the goal is reached."""
        missing = []
        acted = sum(report.actions.values())
        if acted < self.actions:
            missing.append(f"actions {acted}/{self.actions}")
        if report.kills < self.kills:
            missing.append(f"kills {report.kills}/{self.kills}")
        if report.tasks < self.tasks:
            missing.append(f"tasks {report.tasks}/{self.tasks}")
        counts = report.counts()
        missing += [f"{kind} {counts.get(kind, 0)}/{n}" for kind, n in self.kinds if counts.get(kind, 0) < n]
        return ", ".join(missing) or None

    def missing_actions(self, report: Report) -> list[str]:
        counts = report.counts()
        return [kind for kind, n in self.kinds if kind in ACTIONS and counts.get(kind, 0) < n]


@dataclass
class Report:
    tasks: int = 0
    kills: int = 0
    actions: dict[str, int] = field(default_factory=dict)  # chaos actions taken, one count per action
    detail: dict[str, int] = field(default_factory=dict)  # what they did: sig_TERM, clock_back, ...
    load: dict[str, int] = field(default_factory=dict)  # what the load did: exit_thread, producer_fork, ...
    lost: list[str] = field(default_factory=list)
    worker_lost_failures: int = 0  # failed after 3 losses, each blamed on one of our kills (explained)
    isolated: int = 0  # tasks castord ran alone after a thread-host crash beside them
    duplicates: int = 0
    explained: dict[str, int] = field(default_factory=dict)  # duplicates by cause
    unexplained: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    load_s: float = 0.0  # of load and disruption
    settle_s: float = 0.0  # from the end of the load until every task had finished
    goal_missed: str | None = None  # a goal run that reached its deadline first: what was missing

    @property
    def ok(self) -> bool:
        return not self.lost and not self.unexplained and not self.faults and self.goal_missed is None

    def counts(self) -> dict[str, int]:
        """Disruptions by kind: chaos's actions, what they did, what the load did."""
        return {**self.actions, **self.detail, **self.load}

    def line(self) -> str:
        missed = f" GOAL MISSED ({self.goal_missed})" if self.goal_missed else ""
        return (f"chaos:{missed} tasks={self.tasks} kills={self.kills} lost={len(self.lost)} "
                f"duplicates={self.duplicates} unexplained={len(self.unexplained)} faults={len(self.faults)} "
                f"failed_worker_lost={self.worker_lost_failures} isolated={self.isolated} "
                f"wall={self.wall_s:.1f}s load={self.load_s:.1f}s "
                f"settle={self.settle_s:.1f}s explained={json.dumps(self.explained, sort_keys=True)} "
                f"disruptions={json.dumps(self.counts(), sort_keys=True)}")


def _bump(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


class Tail:
    """The complete lines appended to a file since the last call."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._rest = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *complete, self._rest = (self._rest + data).split(b"\n")
        return [line.decode() for line in complete]


class Clock:
    """The wall-clock offset every process of the run reads (SITECUSTOMIZE)."""

    def __init__(self, path: Path):
        path.write_bytes(struct.pack("d", 0.0))
        self._file = open(path, "r+b")  # noqa: SIM115 - kept open for the mmap
        self._map = mmap.mmap(self._file.fileno(), 8)
        self.offset = 0.0

    def set(self, offset: float) -> None:
        struct.pack_into("d", self._map, 0, offset)
        self.offset = offset

    def close(self) -> None:
        self._map.close()
        self._file.close()


def _signal_group(group: int, signum: int) -> None:
    """A process group may have emptied since we looked (its last member exited)."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def identity(pid: int) -> str | None:
    """pid@starttime (as the tasks write it in exec.log), or None if pid is gone."""
    try:
        return f"{pid}@{Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return None


def _pid(ident: str) -> int:
    return int(ident.split("@")[0])


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


class Chaos:
    def __init__(self, workdir: Path, seed: int, rate: float, log=print):  # noqa: ANN001
        self.dir = workdir
        self.seed = seed
        self.rng = random.Random(seed)
        self.rate = rate
        self.log = log
        self.db = str(workdir / "chaos.db")
        self.exec_log = workdir / "exec.log"
        self.castord_log = workdir / "castord.log"
        (workdir / "marks").mkdir()
        (workdir / "site").mkdir()
        (workdir / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        (workdir / "chaosapp.py").write_text(APP)
        (workdir / "producer.py").write_text(PRODUCER)
        self.clock = Clock(workdir / "clock.offset")
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(workdir / "site"), str(workdir), str(REPO))),
                    "CHAOS_DB": self.db, "CHAOS_EXEC_LOG": str(self.exec_log), "CHAOS_MARKS": str(workdir / "marks"),
                    "CHAOS_CLOCK_FILE": str(workdir / "clock.offset")}
        self.producer: subprocess.Popen[bytes] | None = None
        self.masters: list[subprocess.Popen[bytes]] = []
        self.expected_exit: dict[int, str] = {}  # master pid -> what we did to make it exit
        self.accounted: set[int] = set()  # masters whose exit was judged
        self.stopped: set[int] = set()  # SIGSTOPped pids, to SIGKILL with their master or at the end
        self.resume_at: list[tuple[float, int]] = []  # stall_child: when to SIGCONT whom
        self.causes: dict[str, set[str]] = {}  # pid@starttime -> what we did to it (CAUSES)
        # Signal bursts' drain windows, on the boot clock /proc's start times count on.
        self.windows: list[tuple[float, float]] = []
        self.seen: dict[int, tuple[str, int]] = {}  # worker pid -> (its label, its master)
        self.unasked: set[int] = set()  # masters that exited though nobody asked them to
        self.timeline: list[str] = []
        self.started = time.monotonic()
        # What the load and the producer wrote, read as it grows.
        self.tails = {"ids": Tail(workdir / "ids.txt"), "exec": Tail(self.exec_log),
                      "forks": Tail(workdir / "forks.txt")}
        self.entries: dict[str, tuple[str, str]] = {}  # token -> (task id, kind)
        # Processes are named pid@starttime here, as in exec.log.
        self.starts: dict[str, list[str]] = {}  # token -> the processes it started in, in order
        self.exits: dict[str, str] = {}  # process -> the token whose os._exit ended it
        self.exit_codes: dict[str, int] = {}  # process -> that os._exit's code
        self.report = Report()

    # -- bookkeeping -------------------------------------------------------------

    def note(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.started:8.2f} {what}")

    def fault(self, what: str) -> None:
        self.report.faults.append(what)
        self.note(f"FAULT {what}")

    def cause(self, pids: list[int] | set[int], why: str) -> None:
        """Record what we did (or are about to do) to these live processes."""
        for pid in pids:
            ident = identity(pid)
            if ident is not None:
                self.causes.setdefault(ident, set()).add(why)

    def observe(self) -> None:
        """Read what the producer and the tasks appended since the last look."""
        for line in self.tails["ids"].lines():
            token, task_id, kind = line.split()
            self.entries[token] = (task_id, kind)
        for line in self.tails["exec"].lines():
            what, token, proc, *rest = line.split()
            if what == "start":
                self.starts.setdefault(token, []).append(proc)
            elif what == "exit":
                self.exits[proc] = token
                self.exit_codes[proc] = int(rest[0])
                _bump(self.report.load, f"exit_{rest[1]}")
                _bump(self.report.load, f"exit_code_{rest[0]}")
            elif what == "fork":
                _bump(self.report.load, "fork_task")
        for line in self.tails["forks"].lines():
            what, *rest = line.split(maxsplit=3)
            if what == "fork":
                _bump(self.report.load, "producer_fork")
                if rest[2] != "0":
                    self.fault(f"the producer's forked child {rest[0]} (pid {rest[1]}) {_describe_exit(int(rest[2]))}"
                               " (its stderr: producer.err)")
            else:
                self.fault(f"producer: .delay() raised: {' '.join(rest)}")
        self.report.tasks = len(self.entries)

    # -- processes ----------------------------------------------------------------

    @property
    def master(self) -> subprocess.Popen[bytes] | None:
        live = [m for m in self.masters if m.poll() is None]
        return live[-1] if live else None

    def start_master(self) -> subprocess.Popen[bytes]:
        sock_path = str(self.dir / f"notify-{len(self.masters)}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        sock.settimeout(0.5)
        proc = subprocess.Popen([CASTORD, "start", "chaosapp:manager", *CASTORD_ARGS, "--log-file",
                                 str(self.castord_log)],
                                cwd=self.dir, env={**self.env, "NOTIFY_SOCKET": sock_path},
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.masters.append(proc)
        self.note(f"master {proc.pid} started")
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            while proc.poll() is None:
                try:
                    if b"READY=1" in sock.recv(4096):
                        return proc
                except TimeoutError:
                    if time.monotonic() > deadline:
                        self.fault(f"master {proc.pid} not ready {READY_TIMEOUT:g} s after it started")
                        return proc
        finally:
            sock.close()
            os.unlink(sock_path)
        return proc  # it exited before READY: check_masters() says so

    def check_masters(self) -> None:
        """Judge the exit of every master that exited since the last look."""
        for m in self.masters:
            if m.pid in self.accounted or m.poll() is None:
                continue
            self.accounted.add(m.pid)
            why = self.expected_exit.get(m.pid)
            if why is None:
                self.unasked.add(m.pid)
                self.fault(f"master {m.pid} exited on its own ({_describe_exit(m.returncode)}); its last words: "
                           f"{self.last_words(m.pid)}")
            elif m.returncode not in (0, -signal.SIGKILL):
                self.fault(f"master {m.pid} exited with {_describe_exit(m.returncode)} after {why}; its last "
                           f"words: {self.last_words(m.pid)}")
            else:
                self.note(f"master {m.pid} exited ({_describe_exit(m.returncode)}) after {why}")

    def ensure_master(self) -> subprocess.Popen[bytes]:
        self.check_masters()
        master = self.master
        if master is None:
            _bump(self.report.detail, "master_restart")
            master = self.start_master()
        return master

    def last_words(self, pid: int, n: int = 3) -> str:
        """The master's last warning-or-worse log events."""
        words = []
        for event in self.castord_events(lambda e: e.get("pid") == pid and e.get("level") in (
                "warning", "error", "critical")):
            words.append({k: event[k] for k in ("event", "error", "message", "child", "exit_code", "signal",
                                                "failures") if k in event})
        return json.dumps(words[-n:])

    def castord_events(self, keep) -> list[dict]:  # noqa: ANN001
        out = []
        try:
            text = self.castord_log.read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and keep(event):
                out.append(event)
        return out

    def descendants(self, pid: int) -> dict[int, int]:
        """Every descendant of pid -> its parent (children of any of a process's threads)."""
        out: dict[int, int] = {}
        frontier = [pid]
        while frontier:
            current = frontier.pop()
            try:
                threads = os.listdir(f"/proc/{current}/task")
            except OSError:
                continue
            for tid in threads:
                try:
                    kids = [int(k) for k in Path(f"/proc/{current}/task/{tid}/children").read_text().split()]
                except OSError:
                    continue
                for kid in kids:
                    if kid not in out:
                        out[kid] = current
                        frontier.append(kid)
        return out

    def workers(self, master: int) -> list[int]:
        """Process children and thread hosts of a master: not the fork server, and not
        a task's forked copy (it shows its parent's title)."""
        titled = {}
        family = self.descendants(master)
        for pid in family:
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "process-worker" in title or "thread-host" in title:
                titled[pid] = title
        found = [pid for pid in titled if family[pid] not in titled]
        for pid in found:
            label = titled[pid].split("castord: ", 1)[-1].split(" running")[0].split(" idle")[0]
            self.seen[pid] = (label.strip(), master)
        return found

    def label(self, pid: int) -> str:
        label, master = self.seen.get(pid, ("?", None))
        return f"{label} of master {master}"

    def process_children(self, master: int) -> int:
        return sum(1 for pid in self.workers(master) if "process-worker" in self.seen[pid][0])

    # -- the load ---------------------------------------------------------------------

    def start_producer(self) -> None:
        err = open(self.dir / "producer.err", "wb")  # noqa: SIM115 - the child owns it
        try:
            self.producer = subprocess.Popen(
                [sys.executable, str(self.dir / "producer.py"), str(self.dir / "ids.txt"),
                 str(self.dir / "forks.txt"), str(self.dir / "stop"), str(self.rate), str(self.seed + 1)],
                cwd=self.dir, env=self.env, stdout=subprocess.DEVNULL, stderr=err)
        finally:
            err.close()

    def stop_producer(self) -> None:
        (self.dir / "stop").touch()
        if self.producer is None:
            return
        try:
            code = self.producer.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.producer.kill()
            self.producer.wait(timeout=10)
            self.fault("the producer was still running 60 s after it was asked to stop (killed)")
            return
        if code != 0:
            err = (self.dir / "producer.err").read_text(errors="replace")[-600:]
            self.fault(f"the producer exited {_describe_exit(code)}: {err}")

    # -- disruption -------------------------------------------------------------------

    def disrupt(self, duration: float | None, goal: Goal | None, interval: tuple[float, float]) -> None:
        """Act at random intervals: for `duration` seconds, or until `goal` is reached
        (recording what was missing if its deadline comes first)."""
        end = time.monotonic() + (goal.deadline if goal is not None else duration or 0.0)
        while True:
            self.observe()
            self.resume_due()
            if goal is not None and goal.shortfall(self.report) is None:
                return
            if time.monotonic() >= end:
                if goal is not None:
                    self.report.goal_missed = f"after {goal.deadline:g} s: {goal.shortfall(self.report)}"
                return
            time.sleep(self.rng.uniform(*interval))
            self.act(goal)

    def choose(self, goal: Goal | None) -> str:
        missing = goal.missing_actions(self.report) if goal is not None else []
        if missing and self.rng.random() < 0.5:
            return self.rng.choice(missing)
        names = list(ACTIONS)
        return self.rng.choices(names, weights=[ACTIONS[n] for n in names])[0]

    def act(self, goal: Goal | None = None) -> None:
        master = self.ensure_master()
        action = self.choose(goal)
        if getattr(self, f"_{action}")(master) is False:
            return  # nothing to act on (no worker yet, enough children)
        _bump(self.report.actions, action)
        if action in KILLS:
            self.report.kills += 1

    def _victim(self, master: subprocess.Popen[bytes], *, stoppable: bool = False) -> int | None:
        """A random worker of master (with stoppable: not one we stopped already)."""
        workers = [p for p in self.workers(master.pid) if not (stoppable and p in self.stopped)]
        return self.rng.choice(workers) if workers else None

    def _kill_child(self, master: subprocess.Popen[bytes]) -> bool:
        victim = self._victim(master)
        if victim is None:
            return False
        self.cause([victim], "killed")
        self.note(f"kill_child {victim} ({self.label(victim)})")
        _signal(victim, signal.SIGKILL)
        return True

    def _stop_child(self, master: subprocess.Popen[bytes]) -> bool:
        victim = self._victim(master, stoppable=True)
        if victim is None:
            return False
        self.cause([victim], "stopped")
        self.stopped.add(victim)
        self.note(f"stop_child {victim} ({self.label(victim)})")
        _signal(victim, signal.SIGSTOP)  # castord must notice the silence and replace it
        return True

    def _stall_child(self, master: subprocess.Popen[bytes]) -> bool:
        victim = self._victim(master, stoppable=True)
        if victim is None:
            return False
        self.cause([victim], "stopped")
        self.stopped.add(victim)
        seconds = LEASE + self.rng.uniform(1, 3)
        self.note(f"stall_child {victim} ({self.label(victim)}) for {seconds:.1f} s")
        _signal(victim, signal.SIGSTOP)
        self.resume_at.append((time.monotonic() + seconds, victim))
        return True

    def resume_due(self, *, all_now: bool = False) -> None:
        now = time.monotonic()
        for item in [r for r in self.resume_at if all_now or r[0] <= now]:
            self.resume_at.remove(item)
            self.stopped.discard(item[1])
            _signal(item[1], signal.SIGCONT)

    def _stall_master_child(self, master: subprocess.Popen[bytes]) -> bool:
        """The master and one child stall together past the lease (a host under memory
        pressure): the other children go on and recover its tasks."""
        victim = self._victim(master, stoppable=True)
        if victim is None:
            return False
        seconds = LEASE + self.rng.uniform(1, 3)
        child_first = self.rng.random() < 0.5
        self.cause([victim], "stopped")
        self.note(f"stall_master_child master {master.pid} and {victim} ({self.label(victim)}) for "
                  f"{seconds:.1f} s, then {'the child' if child_first else 'the master'} first")
        _signal(master.pid, signal.SIGSTOP)
        _signal(victim, signal.SIGSTOP)
        time.sleep(seconds)
        first, second = (victim, master.pid) if child_first else (master.pid, victim)
        _signal(first, signal.SIGCONT)
        time.sleep(0.3)
        _signal(second, signal.SIGCONT)
        return True

    def _stall_group(self, master: subprocess.Popen[bytes]) -> bool:
        """Every process of castord stops past the lease at once (a paused VM, SIGSTOP
        to its process group), then all resume at once."""
        _signal(master.pid, signal.SIGSTOP)  # first: it spawns nothing while we look
        family = [master.pid, *self.descendants(master.pid)]
        groups = set()
        for pid in family:
            try:
                groups.add(os.getpgid(pid))
            except ProcessLookupError:
                pass
        groups.discard(os.getpgrp())  # never our own
        for group in groups:
            _signal_group(group, signal.SIGSTOP)
        for pid in family:
            _signal(pid, signal.SIGSTOP)
        self.workers(master.pid)  # so that the timeline can name them
        self.cause(family[1:], "stopped")
        seconds = LEASE + self.rng.uniform(1, 3)
        self.note(f"stall_group master {master.pid}, groups {sorted(groups)}, pids {family[1:]} for {seconds:.1f} s")
        time.sleep(seconds)
        for group in groups:
            _signal_group(group, signal.SIGCONT)
        for pid in family:
            if pid not in self.stopped:
                _signal(pid, signal.SIGCONT)
        return True

    def _kill_master(self, master: subprocess.Popen[bytes]) -> bool:
        family = self.descendants(master.pid)
        self.workers(master.pid)
        self.cause(family, "killed")
        self.expected_exit[master.pid] = "SIGKILL"
        self.note(f"kill_master {master.pid} (its descendants {sorted(family)})")
        _signal(master.pid, signal.SIGKILL)
        # Its children exit on their own once they find the master gone, but a
        # SIGSTOPped one never looks: with nobody left to kill it, it would hold
        # its SQLite locks for good. Killing it too is what a host crash does.
        for pid in self.stopped.intersection(family):
            _signal(pid, signal.SIGKILL)
        master.wait(timeout=10)
        self.check_masters()
        self.start_master()
        return True

    def await_exit(self, master: subprocess.Popen[bytes], why: str) -> None:
        """A master asked to stop must exit within EXIT_TIMEOUT; else it is a fault, and killed."""
        try:
            master.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            family = self.descendants(master.pid)
            workers = self.workers(master.pid)
            self.fault(f"master {master.pid} still running {EXIT_TIMEOUT:g} s after {why}, with workers "
                       f"{[f'{p} {self.label(p)}' for p in workers]}; its last words: "
                       f"{self.last_words(master.pid)} (killed)")
            self.cause(family, "killed")
            self.expected_exit[master.pid] = f"{why}, then SIGKILL"
            _signal(master.pid, signal.SIGKILL)
            for pid in family:
                _signal(pid, signal.SIGKILL)
            master.wait(timeout=10)
        self.check_masters()

    def _term(self, master: subprocess.Popen[bytes]) -> bool:
        self.cause(self.workers(master.pid), "drained")  # their daemon tasks are requeued, by design
        self.expected_exit[master.pid] = "SIGTERM"
        self.note(f"term master {master.pid}")
        _signal(master.pid, signal.SIGTERM)
        self.await_exit(master, "SIGTERM")
        self.start_master()
        return True

    def _hup(self, master: subprocess.Popen[bytes]) -> bool:
        self.cause(self.workers(master.pid), "drained")  # the old generation drains
        self.note(f"hup master {master.pid}")
        _signal(master.pid, signal.SIGHUP)
        return True

    def _ttin(self, master: subprocess.Popen[bytes]) -> bool:
        if self.process_children(master.pid) >= MAX_PROCESS_CHILDREN:
            return False
        self.note(f"ttin master {master.pid}")
        _signal(master.pid, signal.SIGTTIN)
        return True

    def _ttou(self, master: subprocess.Popen[bytes]) -> bool:
        self.cause(self.workers(master.pid), "drained")  # we do not know which one it retires
        self.note(f"ttou master {master.pid}")
        _signal(master.pid, signal.SIGTTOU)
        return True

    def _clock_step(self, _master: subprocess.Popen[bytes]) -> bool:
        # Alternately back and forward (from an offset of +x to -y is a step of x+y),
        # by a random amount; the offset stays within an hour of the true time.
        size = self.rng.uniform(300, 3600)
        offset = round(-size if self.clock.offset > 0 or (self.clock.offset == 0 and self.rng.random() < 0.5)
                       else size, 3)
        direction = "forward" if offset > self.clock.offset else "back"
        _bump(self.report.detail, f"clock_{direction}")
        self.note(f"clock_step {direction} by {offset - self.clock.offset:+.0f} s to offset {offset:+.0f} s")
        self.clock.set(offset)
        return True

    def _signal_burst(self, master: subprocess.Popen[bytes]) -> bool:
        """Random signals to the master at short random delays; a master that exits
        is restarted at once and the burst goes on at the new one."""
        sent: list[str] = []
        window = False  # a drain may be under way: every worker alive now is drained
        window_start = 0.0
        for _ in range(self.rng.randint(2, 6)):
            if master.poll() is not None:
                self.check_masters()
                master = self.ensure_master()
            signum = self.rng.choice(BURST_SIGNALS)
            if signum == signal.SIGTTIN and self.process_children(master.pid) >= MAX_PROCESS_CHILDREN:
                signum = signal.SIGTTOU
            name = signal.Signals(signum).name[3:]
            if not window and signum in DRAINING:
                window, window_start = True, time.clock_gettime(time.CLOCK_BOOTTIME)
            if window:
                self.cause(self.workers(master.pid), "drained")
            if signum in STOPPING:
                self.expected_exit.setdefault(master.pid, f"SIG{name} in a signal burst")
            sent.append(f"{name}>{master.pid}")
            _bump(self.report.detail, f"sig_{name}")
            _signal(master.pid, signum)
            # Half the time at once or nearly (the next lands while the master is still
            # acting on this one: mid-drain, mid-stop), else within 0.3 s.
            time.sleep(self.rng.choice((0.0, 0.002, 0.02)) if self.rng.random() < 0.5 else self.rng.uniform(0, 0.3))
        self.note(f"signal_burst {' '.join(sent)}")
        if window:
            time.sleep(0.5)
            for m in self.masters:
                if m.poll() is None:
                    self.cause(self.workers(m.pid), "drained")
            self.windows.append((window_start, time.clock_gettime(time.CLOCK_BOOTTIME)))
        for m in self.masters:
            if m.pid in self.expected_exit and m.pid not in self.accounted:
                self.await_exit(m, f"the signal burst {' '.join(sent)}")
        time.sleep(0.2)
        self.check_masters()  # one that exited though nothing asked it to is a fault
        return True

    # -- the verdict --------------------------------------------------------------------

    def wait_finished(self, cap: float, no_progress: float = 60.0) -> None:
        """Until every task finished, for as long as the count of unfinished ones keeps
        falling (a slow drain is not a loss): give up after `no_progress` s without
        progress, or after `cap` s in all (what is left then is lost)."""
        self.resume_due(all_now=True)
        started = last_progress = time.monotonic()
        fewest = None
        while time.monotonic() - started < cap and time.monotonic() - last_progress < no_progress:
            self.ensure_master()
            left = self.unfinished()
            if left == 0:
                return
            if fewest is None or left < fewest:
                fewest, last_progress = left, time.monotonic()
            time.sleep(0.2)
        self.note(f"settle: gave up with {self.unfinished()} tasks unfinished")

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = sqlite3.connect(self.db, timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def unfinished(self) -> int:
        return self._query("SELECT count(*) FROM castor_tasks WHERE status IN ('pending', 'running')")[0][0]

    def causes_of(self, proc: str) -> list[str]:
        found = set(self.causes.get(proc, ()))
        if proc in self.exits:
            found.add("exited")
        if self.started_in_a_window(proc):
            found.add("drained")
        return [c for c in CAUSES if c in found]

    def started_in_a_window(self, proc: str) -> bool:
        """A worker (tasks name only workers in exec.log's starts) started during a
        burst's drain window: it was alive in it, even if no look of ours saw it."""
        tick = 1 / os.sysconf("SC_CLK_TCK")
        started = int(proc.split("@")[1]) * tick
        return any(start - tick <= started <= end for start, end in self.windows)

    def describe(self, proc: str) -> str:
        notes = "+".join(self.causes_of(proc)) or "untouched"
        if proc in self.exits:
            notes += f", ended by the exit of {self.exits[proc]}"
        if self.seen.get(_pid(proc), ("", None))[1] in self.unasked:
            notes += ", its master exited on its own"
        return f"{proc} ({self.label(_pid(proc))}: {notes})"

    def judge(self) -> None:
        self.observe()
        for event in self.castord_events(lambda e: e.get("event") == "child.spawned"):
            self.seen[event["child_pid"]] = (event["child"], event["pid"])  # castord's word over /proc
        rows = {r[0]: r[1:] for r in self._query("SELECT id, status, error, lost FROM castor_tasks")}
        self.report.isolated = self._query("SELECT count(*) FROM castor_tasks WHERE isolate = 1")[0][0]
        self.report.tasks = len(self.entries)
        for token, (task_id, kind) in self.entries.items():
            status, error, lost = rows.get(task_id, (None, None, None))
            runs = self.starts.get(token, [])
            self._judge_status(token, task_id, kind, status, error, lost, runs)
            if len(runs) > 1:
                self._judge_duplicate(token, task_id, runs)

    def _judge_status(self, token: str, task_id: str, kind: str, status: str | None, error: str | None,
                      lost: int | None, runs: list[str]) -> None:
        where = f"{token} {task_id} ({kind})"
        if status == "success":
            if not runs:
                self.report.lost.append(f"{where} success without running")
        elif status == "failed" and "WorkerLost" in (error or ""):
            self.report.worker_lost_failures += 1
            blamed = [p for p in runs if BLAME.intersection(self.causes_of(p)) or self.exits.get(p) == token]
            if len(blamed) < 3:
                self.report.unexplained.append(
                    f"{where} failed WorkerLost (lost={lost}) but only {len(blamed)} of its starts ran in a process "
                    f"we killed or stopped or its own exit ended: {[self.describe(p) for p in runs]}")
        elif status == "failed":
            self.report.lost.append(f"{where} failed: {(error or '')[:300]}")
        else:
            self.report.lost.append(f"{where} {status or 'missing from the database'}")

    def _judge_duplicate(self, token: str, task_id: str, runs: list[str]) -> None:
        self.report.duplicates += 1
        earlier = [self.causes_of(p) for p in runs[:-1]]
        if all(earlier):
            _bump(self.report.explained, earlier[0][0])
        else:
            self.report.unexplained.append(
                f"{token} {task_id} started {len(runs)} times, in {[self.describe(p) for p in runs]}")

    def judge_castord(self) -> None:
        """castord's own account of the run: the app always boots and the database is
        fine, so a child castord took for a boot failure or a database error was a
        task's exit code believed; a child ended by a task's os._exit is a crash unless
        it or its master was draining (then requeued uncounted, by design); a master that
        drains or stops spawns no child."""
        exited: dict[tuple[int, str], int] = {}  # (master, child label) -> the pid that exited last
        by_pid = {_pid(proc): proc for proc in self.exits}  # castord names children by pid
        stopping: dict[int, str] = {}  # master -> the event that began its stop
        for event in self.castord_events(lambda e: e.get("event") in (
                "child.boot_failed", "castord.boot_failures", "child.database_error", "child.exited",
                "child.spawned", "castord.draining", "castord.stopping")):
            pid = event.get("child_pid")
            if event["event"] in ("castord.draining", "castord.stopping"):
                stopping.setdefault(event["pid"], f"{event['event']} at {event.get('timestamp')}")
                continue
            if event["event"] == "child.spawned":
                if event["pid"] in stopping:
                    self.fault(f"master {event['pid']} spawned {event.get('child')} {pid} after "
                               f"{stopping[event['pid']]}: {json.dumps(event)[:300]}")
                continue
            if event["event"] == "child.exited":
                exited[(event.get("pid"), event.get("child"))] = pid
                proc = by_pid.get(pid)
                if (proc is not None and event.get("expected") and event.get("pid") not in stopping
                        and "drained" not in self.causes_of(proc)):
                    self.fault(f"castord took {event.get('child')} {pid}, ended by the os._exit of task "
                               f"{self.exits[proc]}, for a planned exit: {json.dumps(event)[:300]}")
                continue
            fields = {k: event[k] for k in ("event", "pid", "child", "error", "failures", "message") if k in event}
            culprit = by_pid.get(exited.get((event.get("pid"), event.get("child"))))  # type: ignore[arg-type]
            after = (f", right after {culprit} exited by task {self.exits[culprit]}'s own "
                     f"os._exit({self.exit_codes[culprit]})" if culprit is not None else "")
            self.fault(f"castord logged {event['event']} (the app always boots, the database is fine){after}: "
                       f"{json.dumps(fields)[:300]}")

    def stop_all(self) -> None:
        """Stop every master (TERM), then look for processes of the run left behind."""
        self.resume_due(all_now=True)
        for pid in self.stopped:
            _signal(pid, signal.SIGKILL)
        for master in self.masters:
            if master.poll() is None:
                self.expected_exit[master.pid] = "SIGTERM at the end"
                _signal(master.pid, signal.SIGTERM)
                self.await_exit(master, "SIGTERM at the end")
        deadline = time.monotonic() + 10
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid, title in left.items():
            self.fault(f"process {pid} ({title}) of the run still there 10 s after every master exited (killed)")
            _signal(pid, signal.SIGKILL)

    def leftovers(self) -> dict[int, str]:
        """Live processes started for this run (its database in their environment)."""
        mine = f"CHAOS_DB={self.db}".encode()
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                if mine not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    continue
                if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # a zombie: dead, waiting for its parent
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace").strip()
            except OSError:
                continue
        return found

    def evidence(self, problem: str) -> list[str]:
        """The task's row, its exec-log lines and castord's log events about it."""
        token, task_id = problem.split()[:2]
        lines = []
        conn = sqlite3.connect(self.db, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            row = conn.execute("SELECT * FROM castor_tasks WHERE id = ?", (task_id,)).fetchone()
        finally:
            conn.close()
        if row is not None:
            keep = ("status", "name", "attempts", "lost", "fence", "isolate", "owner", "error")
            lines.append("  row: " + json.dumps({k: (row[k] or "")[:200] if k == "error" else row[k]
                                                 for k in keep if k in row.keys()}))
        runs = [line for line in self.exec_log.read_text().splitlines() if line.split()[1] == token]
        lines.append(f"  exec.log: {runs}")
        fields = ("event", "pid", "role", "child", "child_pid", "attempt", "fence", "reason", "timestamp")
        for event in self.castord_events(lambda e: e.get("task_id") == task_id)[:12]:
            lines.append("  castord: " + json.dumps({k: event[k] for k in fields if k in event}))
        pids = {_pid(line.split()[2]) for line in runs}
        fields = ("event", "pid", "child", "child_pid", "exit_code", "signal", "expected", "silent_s", "timestamp")
        for event in self.castord_events(lambda e: e.get("child_pid") in pids and e.get("event") != "child.spawned"):
            lines.append("  castord: " + json.dumps({k: event[k] for k in fields if k in event}))
        return lines

    def cleanup(self) -> None:
        self.resume_due(all_now=True)
        for pid in self.stopped:  # a stopped orphan of a killed master would stay forever
            _signal(pid, signal.SIGKILL)
        for master in self.masters:
            if master.poll() is None:
                master.send_signal(signal.SIGTERM)
                try:
                    master.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    master.kill()
                    master.wait(timeout=10)
        if self.producer is not None and self.producer.poll() is None:
            self.producer.kill()
            self.producer.wait(timeout=10)
        self.clock.close()
        (self.dir / "timeline.log").write_text("\n".join(self.timeline) + "\n")


def run(duration: float | None = None, rate: float = 40.0, seed: int | None = None,
        interval: tuple[float, float] = (0.5, 2.0), workdir: Path | None = None, log=print,  # noqa: ANN001
        goal: Goal | None = None, settle_cap: float = 600.0) -> Report:
    """Load and disruption for `duration` seconds, or until `goal` (see Goal); then
    wait for every task to finish (while they keep finishing, up to `settle_cap` s)
    and judge. The report's `ok` is False if a task was
    lost, a duplicate or a WorkerLost is unexplained, something misbehaved (faults),
    or the goal was not reached by its deadline."""
    if (duration is None) == (goal is None):
        raise ValueError("give run() either duration= or goal=")
    seed = random.randrange(1 << 30) if seed is None else seed
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="castor-chaos-")) if workdir is None else Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)  # --workdir may name a directory to create
    what = (f"{duration:g} s of load" if goal is None else
            f"load until {goal.actions} actions ({goal.kills} kills), {goal.tasks} tasks"
            f"{''.join(f', {n} {k}' for k, n in goal.kinds)}, at most {goal.deadline:g} s")
    log(f"chaos: seed {seed}, {what} at {rate:g} tasks/s, in {workdir}")
    chaos = Chaos(workdir, seed, rate, log)
    try:
        chaos.start_master()
        chaos.start_producer()
        load_started = time.monotonic()
        try:
            chaos.disrupt(duration, goal, interval)
        finally:
            chaos.stop_producer()
        load_ended = time.monotonic()
        chaos.report.load_s = load_ended - load_started
        chaos.wait_finished(cap=settle_cap)
        chaos.report.settle_s = time.monotonic() - load_ended
        chaos.judge()
        chaos.judge_castord()
        chaos.stop_all()
        chaos.report.wall_s = time.monotonic() - chaos.started
        report = chaos.report
        for problem in (report.lost + report.unexplained)[:8]:
            log(f"chaos: PROBLEM {problem}")
            for line in chaos.evidence(problem):
                log(line)
        for fault in report.faults[:8]:
            log(f"chaos: FAULT {fault}")
    finally:
        chaos.cleanup()
    log(report.line())
    if not report.ok:
        log(f"chaos: evidence kept in {workdir} (timeline.log, castord.log, exec.log, ids.txt)")
    elif own_dir:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def _kind(text: str) -> tuple[str, int]:
    kind, _, n = text.partition("=")
    if not n.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give KIND=N, e.g. stall_group=1")
    return kind, int(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of load and disruption (default 180, unless --until-... is given)")
    parser.add_argument("--until-actions", type=int, default=None, metavar="N",
                        help="instead: run until N chaos actions were taken (and --until-tasks enqueued)")
    parser.add_argument("--until-tasks", type=int, default=None, metavar="M")
    parser.add_argument("--until-kills", type=int, default=None, metavar="K")
    parser.add_argument("--until-kind", type=_kind, action="append", default=None, metavar="KIND=N",
                        help="and at least N disruptions of KIND (an action, sig_QUIT, exit_thread, ...)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds a --until-... run may take before it counts as failed (default 90)")
    parser.add_argument("--rate", type=float, default=40, help="tasks enqueued per second")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="an empty directory for the run's files, kept afterwards (default: a temporary "
                             "one, deleted if the run is ok)")
    args = parser.parse_args()
    until = (args.until_actions, args.until_tasks, args.until_kills, args.until_kind, args.deadline)
    if any(v is not None for v in until):
        if args.duration is not None:
            parser.error("--duration runs for a fixed time; --until-... runs until a goal: give one or the other")
        defaults = Goal()
        goal = Goal(actions=defaults.actions if args.until_actions is None else args.until_actions,
                    kills=0 if args.until_kills is None else args.until_kills,
                    tasks=0 if args.until_tasks is None else args.until_tasks,
                    deadline=defaults.deadline if args.deadline is None else args.deadline,
                    kinds=tuple(args.until_kind or ()))
        report = run(rate=args.rate, seed=args.seed, goal=goal, workdir=args.workdir)
    else:
        report = run(180 if args.duration is None else args.duration, args.rate, args.seed,
                     workdir=args.workdir)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
