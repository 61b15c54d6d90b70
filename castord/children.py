"""What runs inside a castord child: load APP, run one Worker, report heartbeats.

Children are started from a clean fork server (never forked from the master,
which has beaver-db's threads), import APP themselves, and talk to the master
over one duplex pipe:

    child -> master   ("ready", {...}) · ("beat", {...}) · ("boot_failed", message)
                      · ("retiring", reason) · ("database_error", message)
                      · ("exiting", reason)
    master -> child   "drain" (stop claiming; daemon tasks are abandoned at once)

and, on PostgreSQL, a socket of wake-ups the master relays from its one LISTEN
connection (castor/store/pg_relay.py says why it is not this pipe).

Why a child left travels over the pipe, never in its exit status: task code can
call os._exit() with any number. Every deliberate exit here says ("exiting",
reason) first; a child that vanishes without a word crashed, whatever its status.
Each child leads its own process group, so the master can kill whatever task
code forked along with it.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from setproctitle import setproctitle

from castor.app import AppLoadError, load_manager
from castor.errors import StoreError, TaskCancelled, TaskTimeout
from castor.execution import failure_outcome, settlement_for
from castor.instrumentation import flush_all, stopped
from castor.logs import get_logger
from castor.store.pg_relay import use_relay
from castor.worker import Worker
from castord.logging import flush_output
from castord.tally import Tally

PROCESS_WORKER = "process-worker"
THREAD_HOST = "thread-host"

# Exit statuses, for people reading `child.exited` lines. The master does not
# act on them (a task can exit with any of these); it acts on the messages.
# Could not load APP (after ("boot_failed", message)).
EXIT_BOOT_FAILED = 3
# A process task ran past its timeout=, or was cancelled while it ran: recorded,
# then the child leaves to stop it; the master replaces it at once.
EXIT_TASK_TIMEOUT = 5
EXIT_TASK_CANCELLED = 6
# The database became unusable under a running child (damaged, read-only, disk
# failing), after ("database_error", message); the master counts it like a boot
# failure, so castord stops instead of replacing children forever.
EXIT_DATABASE_ERROR = 7
# How long a leaving child waits for castor.integrations' SDKs to send what they hold.
FLUSH_SECONDS = 2.0


@dataclass(frozen=True)
class ChildSpec:
    role: str
    index: int
    generation: int
    owner: str
    app: str
    threads: int
    queues: tuple[str, ...] | None
    lease: float
    heartbeat_interval: float
    max_tasks: int | None
    max_memory_mb: int | None
    log_format: str
    log_level: str
    log_file: str | None
    capture_output: bool = False
    prefetch: int = 32
    max_lost: int = 3

    @property
    def mode(self) -> str:
        return "process" if self.role == PROCESS_WORKER else "thread"

    @property
    def label(self) -> str:
        return f"{self.role} {self.index}"


def rss_kb(pid: int | str = "self") -> int:
    """Resident set size from /proc (0 where unavailable)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return 0


class Channel:
    """The child's end of the pipe; sends are serialised across threads."""

    def __init__(self, conn: Any):
        self.conn = conn
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def send(self, kind: str, payload: Any = None) -> None:
        if os.getpid() != self._pid:
            # A process task's fork: it must not speak for the child (nor wait on a
            # lock another thread of the parent held when it forked).
            return
        with self._lock:
            try:
                self.conn.send((kind, payload))
            except (OSError, EOFError, BrokenPipeError):
                os._exit(0)  # the master is gone: nothing left to report to


def child_main(spec: ChildSpec, conn: Any, relay: socket.socket | None = None) -> None:
    """Entry point in the child process. `relay`: the master's wake-up relay (PostgreSQL)."""
    # Our own process group (its id is our pid, which the master knows): whatever
    # task code forks stays in it, so the master can kill it all with us.
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    _close_master_tracker()
    # The master coordinates shutdown: INT, HUP, TTIN, TTOU are its to act on
    # (and TTIN/TTOU would otherwise stop us).
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(signum, signal.SIG_IGN)
    # USR1 (forwarded by the master after log rotation) and a TERM sent to a child
    # by hand: the handlers only record; the heartbeat thread acts.
    reopen_logs = threading.Event()
    drain_requested = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: reopen_logs.set())
    signal.signal(signal.SIGTERM, lambda *_: drain_requested.set())
    setproctitle(f"castord: {spec.label} booting {spec.app}")
    from castord.logging import configure

    sink = configure(spec.role, fmt=spec.log_format, level=spec.log_level, log_file=spec.log_file)
    workers: list[Worker] = []  # the worker, once APP is loaded: whose task wrote to fd 1 or 2
    if sink.fmt == "json" or spec.capture_output:  # from here on, APP's own import included
        sink.capture_output(task_fields=lambda: _running_task_fields(workers))
    log = get_logger("castord.child")
    channel = Channel(conn)
    # A process task's fork gets /dev/null where our pipe was: it cannot write into
    # it, and the master sees end-of-file as soon as we are gone.
    os.register_at_fork(after_in_child=functools.partial(_detach, conn.fileno()))
    try:
        manager = load_manager(spec.app)
    except AppLoadError as exc:
        channel.send("boot_failed", str(exc))
        os._exit(EXIT_BOOT_FAILED)
    if relay is not None:
        use_relay(manager.store, relay)  # before the worker first waits on the store
    worker = Worker(
        manager, mode=spec.mode, threads=max(1, spec.threads), queues=spec.queues,
        lease=spec.lease, owner=spec.owner, prefetch=spec.prefetch, max_lost=spec.max_lost,
    )
    workers.append(worker)
    tally = Tally()
    worker.on_settled = tally.add
    # A TERM sent to a child by hand drains just that child (see Heartbeat).
    heartbeat = Heartbeat(worker, spec, channel, log, sink, reopen_logs, tally, drain_requested)
    if spec.role == PROCESS_WORKER:
        worker.on_timeout = lambda record: _timed_out(worker, record, heartbeat)
        worker.on_cancel = lambda record: _cancelled(worker, record, heartbeat)
        worker.on_lease_lost = lambda record: _lease_lost(worker, record, channel)
    heartbeat.start()
    threading.Thread(target=_listen, args=(conn, worker, spec, channel), name="castord-control",
                     daemon=True).start()
    channel.send("ready", {"pid": os.getpid(), "owner": spec.owner})
    log.info("child.ready", child=spec.label, owner=spec.owner)
    try:
        worker.run(max_tasks=spec.max_tasks)
    except StoreError as exc:  # a lock is waited out in run(); this is worse
        log.critical("child.database_error", child=spec.label, error=str(exc))
        channel.send("database_error", str(exc))
        logging.shutdown()
        os._exit(EXIT_DATABASE_ERROR)
    heartbeat.beat()  # the last tally, so no finished task goes uncounted
    reason = heartbeat.retired or "drained"
    if spec.max_tasks is not None and worker.done >= spec.max_tasks:
        reason = f"max tasks per child ({spec.max_tasks}) reached"
        channel.send("retiring", reason)
    # Daemon tasks still running in pool threads are requeued by the master.
    _leave(channel, reason, 0)


def _detach(fd: int) -> None:
    """In a fork of the child: point `fd` at /dev/null (the number stays valid for
    the Connection object that still names it)."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        pass


def _close_master_tracker() -> None:
    """Close our copy of the pipe to the master's multiprocess resource tracker.

    As it exits, the master waits for that tracker, which waits until every copy
    of the pipe is closed: a process task's fork that outlived us (one that left
    our process group with setsid, say) held castord's exit forever. Task code
    that needs a tracker starts its own.
    """
    try:
        from multiprocess import resource_tracker

        tracker = resource_tracker._resource_tracker  # noqa: SLF001 - no public way to let go
        fd, tracker._fd, tracker._pid = tracker._fd, None, None  # noqa: SLF001
        if fd is not None:
            os.close(fd)
    except (ImportError, AttributeError, OSError):
        pass


def _leave(channel: Channel, reason: str, code: int) -> None:
    """Every deliberate exit: say so (the master trusts this, not the status), then go."""
    channel.send("exiting", reason)
    # The tracing and error-reporting SDKs' buffers (castor.integrations): _exit skips
    # their atexit flush. Bounded: a collector that does not answer costs FLUSH_SECONDS.
    flush_all(timeout=FLUSH_SECONDS)
    flush_output()  # what task code wrote last, as task.output lines
    logging.shutdown()  # flush the log file before _exit skips interpreter cleanup
    os._exit(code)


def _running_task_fields(workers: list[Worker]) -> dict[str, Any] | None:
    """The log fields of the one task running in this child, if just one is."""
    if not workers:
        return None
    running = list(workers[0].running.values())
    if len(running) != 1:
        return None
    record = running[0]
    return {"task_id": record.id, "task_name": record.name, "queue": record.queue, "attempt": record.attempts}


def _timed_out(worker: Worker, record: Any, heartbeat: Heartbeat) -> None:
    """A process task ran past its timeout=: fail it (or schedule its retry), then
    leave so the master replaces us."""
    timeout = record.options["timeout"]
    _stop_task(worker, record, heartbeat, TaskTimeout(
        f"{record.name} ran past its timeout of {timeout:g} s; its process child was stopped and replaced"),
        f"task {record.id} ran past its timeout of {timeout:g} s", EXIT_TASK_TIMEOUT)


def _cancelled(worker: Worker, record: Any, heartbeat: Heartbeat) -> None:
    """A running process task was cancelled: record that, then leave (the only way
    to stop arbitrary code at once); the master replaces us."""
    _stop_task(worker, record, heartbeat, TaskCancelled(
        f"task {record.id} ({record.name}) was cancelled while running; its process child was "
        "stopped and replaced"), f"task {record.id} was cancelled", EXIT_TASK_CANCELLED)


def _lease_lost(worker: Worker, record: Any, channel: Channel) -> None:
    """The running task's lease expired while this child stalled, and the task went
    to another claim: whatever this attempt writes is refused, and it may be running
    elsewhere now. Leaving is the only way to stop a process task; nothing to settle
    (but the outcomes of its batch, and the tasks claimed with it)."""
    _hand_back(worker)
    reason = f"task {record.id} lost its lease while this child stalled"
    channel.send("retiring", reason)
    _leave(channel, reason, 0)


def _stop_task(worker: Worker, record: Any, heartbeat: Heartbeat, exc: BaseException, reason: str,
               code: int) -> None:
    _hand_back(worker)
    stopped(worker.manager, record, exc)  # end the attempt's span, report it to Sentry
    now = time.time()
    settlement = settlement_for(worker.manager.retention, record, failure_outcome(record, exc), worker.owner, now)
    # Its end line (task.cancelled, task.failed or task.retrying) and its tally, as
    # for a task that ended on its own; the last heartbeat carries the tally.
    worker.settle(settlement, duration=max(0.0, now - (record.started_at or now)))
    heartbeat.beat()
    heartbeat.channel.send("retiring", reason)
    _leave(heartbeat.channel, reason, code)


def _hand_back(worker: Worker) -> None:
    """Before leaving mid-batch: write the outcomes of the tasks already run and
    return the ones claimed with the running task (uncounted). Best effort: what
    is not written here the master returns to the queue when we are gone."""
    try:
        worker.hand_back()
    except Exception:  # noqa: BLE001 - leaving anyway
        pass


def _listen(conn: Any, worker: Worker, spec: ChildSpec, channel: Channel) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # master gone
        if message == "drain":
            _drain(worker, spec, channel)


def _drain(worker: Worker, spec: ChildSpec, channel: Channel) -> None:
    worker.stop()
    if spec.role == PROCESS_WORKER and any(r.daemon for r in list(worker.running.values())):
        # A daemon task may be stopped at once; the master requeues it (attempt
        # not counted) when it sees us exit.
        _hand_back(worker)
        _leave(channel, "drained (daemon task stopped)", 0)


class Heartbeat:
    """Tells the master we are alive every interval, with what we are doing."""

    def __init__(self, worker: Worker, spec: ChildSpec, channel: Channel, log: Any, sink: Any,
                 reopen_logs: threading.Event, tally: Tally | None = None,
                 drain_requested: threading.Event | None = None):
        self.worker = worker
        self.spec = spec
        self.channel = channel
        self.log = log
        self.sink = sink
        self.reopen_logs = reopen_logs
        self.tally = tally
        self.drain_requested = drain_requested or threading.Event()
        self.retired: str | None = None  # why we stopped claiming on our own (memory)
        self._title = ""

    def start(self) -> None:
        threading.Thread(target=self._loop, name="castord-heartbeat", daemon=True).start()

    def _loop(self) -> None:
        while True:
            if self.drain_requested.is_set():  # a TERM sent to this child
                self.drain_requested.clear()
                _drain(self.worker, self.spec, self.channel)
            if self.reopen_logs.is_set():
                self.reopen_logs.clear()
                self.sink.reopen()
            self.beat()
            self.drain_requested.wait(self.spec.heartbeat_interval)  # a TERM wakes us at once

    def beat(self) -> None:
        running = [
            {"id": r.id, "name": r.name, "daemon": r.daemon, "started_at": r.started_at}
            for r in list(self.worker.running.values())
        ]
        rss = rss_kb()
        self.channel.send("beat", {"running": running, "done": self.worker.done, "rss_kb": rss,
                                   "stopping": self.worker.stopping,
                                   "tally": self.tally.take() if self.tally is not None else None})
        self._set_title(running)
        limit = self.spec.max_memory_mb
        if limit is not None and rss > limit * 1024 and not self.worker.stopping:
            self.log.warning("child.retiring", child=self.spec.label, reason="max memory per child",
                             rss_mb=rss // 1024, limit_mb=limit)
            self.retired = f"RSS {rss // 1024} MB over --max-memory-per-child {limit}"
            self.channel.send("retiring", self.retired)
            self.worker.stop()

    def _set_title(self, running: list[dict[str, Any]]) -> None:
        if not running:
            title = f"castord: {self.spec.label} idle"
        elif self.spec.role == PROCESS_WORKER:
            task = running[0]
            title = f"castord: {self.spec.label} running {task['name']} {task['id'][-8:]}"
        else:
            title = f"castord: {self.spec.label} running {len(running)}/{self.spec.threads} threads"
        if title != self._title:
            setproctitle(title)
            self._title = title
