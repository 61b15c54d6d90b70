"""The master: a single loop that spawns, watches, drains and replaces children.

It runs no task code. Signal handlers only record (castord/signals.py, which
also holds what each signal means in each State); every decision happens here,
in one thread, between waits on the children's pipes, their process sentinels
and the signal wake-up socket.

What it believes about a child comes from the child's own messages, never from
its exit status (task code can exit with any number) nor from a pipe written by
a process task's fork. Each child leads its own process group, killed with it.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from multiprocess.connection import wait
from setproctitle import setproctitle

from castor import task_log
from castor.errors import StoreUnavailable
from castor.logs import get_logger
from castor.manager import Manager
from castor.periodic import Scheduler
from castor.store.pg_relay import RelayHub, start_hub
from castor.views import DAEMON_FORGET_SECONDS
from castor.workflow_stops import report_stopped
from castord import forkserver
from castord.children import PROCESS_WORKER, THREAD_HOST, ChildSpec, child_main
from castord.config import CHILD_KILL_GRACE_SECONDS, Config
from castord.errors import ExitCode
from castord.logging import LogSink
from castord.notify import Notifier, watchdog_interval
from castord.signals import Intent, SignalQueue, State, intent_for
from castord.tally import Tally

log = get_logger("castord.master")

MAX_BOOT_FAILURES = 5
# Between SIGABRT and SIGKILL for an unresponsive child; part of the minimum --lease.
KILL_GRACE_SECONDS = CHILD_KILL_GRACE_SECONDS
STATUS_SECONDS = 5.0
# How often a castord looks for the rows of castords long dead (views.DAEMON_FORGET_SECONDS).
FORGET_EVERY_SECONDS = 300.0
RECORD_LOCK_SECONDS = 0.2  # longest wait for the database lock to write the status row
# The workflow sweep (Store.sweep_workflows, docs/workflows.md): how often a castord runs
# it (its first at the first status row), how long a running workflow must have stood
# still to be looked at, how many one round looks at, and its longest wait for a lock.
WORKFLOW_SWEEP_SECONDS = 30.0
WORKFLOW_STALE_SECONDS = 60.0
WORKFLOW_SWEEP_LIMIT = 100
WORKFLOW_SWEEP_LOCK_SECONDS = 1.0
# Heartbeats in a row that find the database file missing or another file at its
# path before castord gives up on it (one could catch a restore mid-rename).
DATABASE_STRIKES = 2
# Longer than a pass of the loop takes beyond its wait on a busy host; a gap past it
# is the master's own stall (see _excuse_own_stall).
STALL_SLACK_SECONDS = 0.5

__all__ = ["State", "Supervisor", "backoff", "describe_exit"]


@dataclass
class Child:
    spec: ChildSpec
    process: Any
    conn: Any
    spawned_at: float
    last_beat: float
    ready: bool = False
    draining: bool = False
    retiring: bool = False
    boot_error: str | None = None  # ("boot_failed", message)
    database_error: str | None = None  # ("database_error", message)
    farewell: str | None = None  # ("exiting", reason): it left on purpose
    stopped: bool = False  # killed by the master to stop: not the task's fault
    reopen_logs: bool = False  # USR1 came while it booted: forward it once ready
    kill_deadline: float | None = None
    relay_key: int | None = None  # its socket in the wake-up relay (PostgreSQL)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pgid(self) -> int:
        return self.process.pid  # the child makes itself leader of its own group


@dataclass
class Slot:
    """A place for one child; remembers restart backoff across its occupants."""

    role: str
    index: int
    generation: int
    failures: int = 0
    respawn_at: float = 0.0
    child: Child | None = None
    retired: bool = False  # shrunk away (TTOU) or the old generation of a reload


class Supervisor:
    def __init__(self, config: Config, manager: Manager, sink: LogSink | None = None,
                 signals: SignalQueue | None = None):
        self.config = config
        self.manager = manager
        self.sink = sink
        self.state = State.RUNNING
        self.reload_pending = False  # a HUP came during a reload: reload again after it
        self.generation = 0
        self.slots: list[Slot] = []
        # A queue installed earlier (before APP loads) keeps what arrived meanwhile.
        self.signals = signals or SignalQueue()
        self.notifier = Notifier()
        self.daemon_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.started_at = time.time()
        self.ready_sent = False
        self.on_ready: Callable[[], object] | None = None  # `start --detach` waits for this
        self.drain_deadline: float | None = None
        self.exit_code = ExitCode.OK
        self._next_record = 0.0
        self._record_locked = False
        self._next_forget = 0.0  # monotonic: when to look for dead castords' rows again
        self._next_sweep = 0.0  # monotonic: when to sweep the workflows again
        self._next_status = 0.0
        self._watchdog = watchdog_interval()
        self._next_watchdog = 0.0
        # castord starts the fork server before it loads APP (castord/forkserver.py);
        # the first child's start starts it if nobody did.
        self._ctx = forkserver.context()
        self.scheduler: Scheduler | None = None  # fires @manager.periodic tasks (castor/periodic.py)
        # For the metrics endpoint: finished tasks as children report them, and replacements.
        self.tally = Tally()
        self.restarts: dict[tuple[str, str], int] = {}
        # The `castor` command's dashboard: called after every pass of the loop,
        # which wakes at least every tick_seconds while it is set.
        self.on_tick: Callable[[], object] | None = None
        self.tick_seconds = 0.5
        # Process groups of children, until killed after their leader exits.
        self.groups: set[int] = set()
        # The file the store opened (None for a server database, or if it cannot be stat'ed).
        self._db_path: str | None = getattr(manager.store, "path", None)
        try:
            self._db_identity = _file_identity(self._db_path)
        except OSError:
            self._db_identity = None
        self._db_strikes = 0
        self.last_pass = time.monotonic()  # the main loop's latest pass (see _tick)
        self._asked_wait = 0.0  # the loop's latest wait, for _excuse_own_stall
        # PostgreSQL: the castord's one LISTEN, relayed to the children (castor/store/pg_relay.py).
        self.relay: RelayHub | None = None

    # -- lifecycle -------------------------------------------------------------

    def run(self) -> int:
        self.signals.install()
        self._start_relay()  # listening before the first child looks at the database
        self._spawn_generation()
        setproctitle(self._title())
        try:
            if self.manager.schedules:
                self.scheduler = Scheduler(self.manager, now=time.time())
            self.last_pass = time.monotonic()  # the spawning above was no stall
            while self._live_children() or self.state.accepting:
                self._tick(self._wait())
        finally:
            self._finish()
        return int(self.exit_code)

    def _finish(self) -> None:
        for slot in self.slots:
            if slot.child is not None:
                self._kill(slot.child, signal.SIGKILL)
                slot.child.process.join(5)
                self._release(slot.child, count_attempt=False)
        # Whatever task code forked must not outlive castord (or keep claiming tasks).
        for pgid in sorted(self.groups):
            _kill_group(pgid)
        self.groups.clear()
        if self.relay is not None:
            self.relay.close()
        try:
            self.manager.store.remove_daemon(self.daemon_id)
        except Exception:  # noqa: BLE001 - the row ages out anyway
            log.exception("castord.cleanup_failed")
        log.info("castord.stopped", exit_code=int(self.exit_code))
        self.notifier.send(STATUS="stopped")
        self.signals.close()

    def _wait(self) -> list[Any]:
        objects: list[Any] = [self.signals.wakeup]
        for child in self._live_children():
            objects.extend((child.conn, child.process.sentinel))
        self._asked_wait = self._timeout()
        return wait(objects, timeout=self._asked_wait)

    def _timeout(self) -> float:
        now = time.monotonic()
        deadlines = [now + self.config.heartbeat_interval]
        if self.on_tick is not None:
            deadlines.append(now + self.tick_seconds)
        if self.state.accepting:  # a draining castord respawns nothing: no deadline (it spun)
            deadlines += [s.respawn_at for s in self.slots if s.child is None and not s.retired]
        if self.drain_deadline is not None:
            deadlines.append(self.drain_deadline)
        if self._watchdog is not None:
            deadlines.append(self._next_watchdog)
        if self.scheduler is not None and self.state.accepting:
            tick = self.scheduler.next_deadline()
            if tick is not None:  # an epoch time: convert it to the monotonic clock
                deadlines.append(now + tick - time.time())
        return max(0.0, min(deadlines) - now)

    def _tick(self, ready: list[Any]) -> None:
        # For the metrics endpoint (its own thread): a loop that stops passing here is
        # stuck, though the endpoint still answers (castor_master_loop_age_seconds).
        pass_began, self.last_pass = self.last_pass, time.monotonic()
        if self.signals.wakeup in ready:
            self.signals.drain_wakeups()
        for signum in self.signals.pop_all():
            self._on_signal(signum)
        for child in self._live_children():
            if child.conn in ready:
                self._read(child)
        self._reap()
        self._check_reload_done()
        now = time.monotonic()
        self._excuse_own_stall(now, since=pass_began)
        self._check_heartbeats(now)
        self._check_drain_deadline(now)
        if self.state.accepting:
            self._respawn_due(now)
            if self.scheduler is not None:
                self.scheduler.fire_due(time.time())  # not while draining: a stopping castord fires nothing
        self._announce(now)
        if self.on_tick is not None:
            self.on_tick()

    # -- spawning --------------------------------------------------------------

    def _start_relay(self) -> None:
        try:
            self.relay = start_hub(self.manager.store)
        except StoreUnavailable as exc:  # each child listens on its own, as before
            log.warning("castord.relay_unavailable", error=str(exc))

    def _spawn_generation(self) -> None:
        self.generation += 1
        roles = [(PROCESS_WORKER, i) for i in range(self.config.workers)]
        if self.config.threads > 0:
            roles.append((THREAD_HOST, 0))
        for role, index in roles:
            slot = Slot(role, index, self.generation)
            self.slots.append(slot)
            self._spawn(slot)

    def _spawn(self, slot: Slot) -> None:
        if not self.state.accepting:  # the one gate: no child is born into a drain or a stop
            return
        cfg = self.config
        spec = ChildSpec(
            role=slot.role, index=slot.index, generation=self.generation,
            owner=f"{self.daemon_id}:{slot.role}-{slot.index}:{uuid.uuid4().hex[:6]}",
            app=cfg.app, threads=cfg.threads, queues=cfg.queues, lease=cfg.lease, prefetch=cfg.prefetch,
            max_lost=cfg.max_lost,
            heartbeat_interval=cfg.heartbeat_interval,
            max_tasks=cfg.max_tasks_per_child if slot.role == PROCESS_WORKER else None,
            max_memory_mb=cfg.max_memory_per_child if slot.role == PROCESS_WORKER else None,
            log_format=cfg.log_format, log_level=cfg.log_level, log_file=cfg.log_file,
            capture_output=cfg.capture_output,
        )
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        # Fed from before the child starts: no notification after its first look is lost.
        relay = self.relay
        relay_key, relay_end = relay.attach() if relay is not None else (None, None)
        process = self._ctx.Process(target=child_main, args=(spec, child_end, relay_end), name=spec.label,
                                    daemon=False)
        try:
            process.start()
        except BaseException:
            if relay is not None and relay_key is not None:
                relay.detach(relay_key)
            raise
        finally:
            child_end.close()
            if relay_end is not None:
                relay_end.close()
        self.groups.add(process.pid)
        now = time.monotonic()
        slot.child = Child(spec, process, parent_end, spawned_at=now, last_beat=now, relay_key=relay_key)
        log.info("child.spawned", child=spec.label, child_pid=process.pid, generation=self.generation)

    def _respawn_due(self, now: float) -> None:
        for slot in self.slots:
            if slot.child is None and not slot.retired and now >= slot.respawn_at:
                self._spawn(slot)

    # -- messages from children ------------------------------------------------

    def _read(self, child: Child) -> None:
        try:
            while child.conn.poll():
                kind, payload = child.conn.recv()
                self._on_message(child, kind, payload)
        except (EOFError, OSError):
            pass  # the child is exiting; its sentinel tells us the rest

    def _on_message(self, child: Child, kind: str, payload: Any) -> None:
        child.last_beat = time.monotonic()
        if kind == "ready":
            child.ready = True
            if child.draining or not self.state.accepting:  # a drain was requested while it booted
                child.draining = True
                self._send(child, "drain")
            if child.reopen_logs:  # a rotation while it booted: its handler is in place now
                child.reopen_logs = False
                self._signal(child, signal.SIGUSR1)
        elif kind == "beat":
            child.info = payload
            if payload.get("tally"):
                self.tally.merge(payload["tally"])
        elif kind == "boot_failed":
            child.boot_error = payload
        elif kind == "database_error":
            child.database_error = payload
        elif kind == "exiting":
            child.farewell = payload
        elif kind == "retiring":
            child.retiring = True
            log.info("child.retiring", child=child.spec.label, child_pid=child.pid, reason=payload)

    def _send(self, child: Child, message: str) -> None:
        try:
            child.conn.send(message)
        except (OSError, BrokenPipeError):
            pass

    # -- children that exit -----------------------------------------------------

    def _reap(self) -> None:
        for slot in self.slots:
            child = slot.child
            if child is None or child.process.is_alive():
                continue
            child.process.join()
            # Anything task code forked is an orphan now: it goes with its child,
            # first, so that no copy of the pipe keeps a half-sent message unended.
            _kill_group(child.pgid)
            self.groups.discard(child.pgid)
            self._read(child)  # last words (exiting, boot_failed, database_error)
            child.conn.close()
            if self.relay is not None and child.relay_key is not None:
                self.relay.detach(child.relay_key)
            slot.child = None
            self._on_exit(slot, child, child.process.exitcode)
        # Slots shrunk away or left by a reload are forgotten once their child is gone.
        self.slots = [s for s in self.slots if not (s.retired and s.child is None)]

    def _on_exit(self, slot: Slot, child: Child, code: int | None) -> None:
        # Judged by what the child said and what we did to it; the status is only
        # logged (a task's os._exit(7) is a crash, not a database error).
        expected = child.farewell is not None or child.stopped
        replaced = self.state.accepting and not slot.retired
        fields: dict[str, Any] = {"child": child.spec.label, "child_pid": child.pid,
                                  "uptime_s": round(time.monotonic() - child.spawned_at, 3)}
        fields.update(describe_exit(code))
        if child.farewell is not None:
            fields["reason"] = child.farewell
        # A database error is not the task's fault: its attempt is not counted.
        if child.database_error is not None:
            released = self._release(child, count_attempt=False, reason="database error")
        elif expected:
            released = self._release(child, count_attempt=False, reason="drained")
        else:
            released = self._release(child, count_attempt=True, reason="worker lost")
        if replaced:
            key = (child.spec.role, "recycled" if expected else "crash")
            self.restarts[key] = self.restarts.get(key, 0) + 1
        if expected:
            log.info("child.exited", **fields, expected=True)
        else:
            log.error("child.exited", **fields, expected=False, tasks_returned=len(released))
        if replaced:
            self._count_failure(slot, child, expected)

    def _count_failure(self, slot: Slot, child: Child, expected: bool) -> None:
        """Restart backoff for the slot; castord stops if its children cannot boot or work."""
        # Died before it said ready (import error, or worse), or could not use the database.
        cannot_work = child.database_error is not None or not (child.ready or expected)
        if cannot_work:
            slot.failures += 1
            error = child.database_error or child.boot_error
            log.error("child.boot_failed", child=child.spec.label, error=error, failures=slot.failures)
            if slot.failures >= MAX_BOOT_FAILURES:
                log.critical("castord.boot_failures", failures=slot.failures, error=error,
                             message="children keep failing to boot or to use the database; stopping")
                self.exit_code = ExitCode.BOOT_FAILURES
                self._begin_fast_stop()
                return
        elif expected:
            slot.failures = 0
        elif time.monotonic() - child.spawned_at > 30:
            slot.failures = 1  # a long-lived child that crashed: restart at once
        else:
            slot.failures += 1
        slot.respawn_at = time.monotonic() + backoff(slot.failures)

    def _release(self, child: Child, *, count_attempt: bool, reason: str = "drained") -> list[Any]:
        try:
            released = self.manager.store.release_owner(
                child.spec.owner, count_attempt=count_attempt, max_lost=self.config.max_lost)
        except Exception:  # noqa: BLE001 - leases expire anyway; never crash the master
            log.exception("castord.release_failed", child=child.spec.label)
            return []
        # As they are now: failed, cancelled, or back in the queue.
        task_log.released(released, reason=reason, counted=count_attempt, child=child.spec.label)
        if released and self.manager.hooks.listeners:  # e.g. task.failed for a task whose child was OOM-killed
            self.manager.hooks.released(released, counted=count_attempt)
        if released:
            try:  # the members the lost ones' workflows stopped: their lines and hooks
                report_stopped(self.manager.store, self.manager.hooks,
                               [(r.workflow_id, r.id, r.status) for r in released], child=child.spec.label)
            except Exception:  # noqa: BLE001 - never crash the master
                log.exception("castord.stopped_members_unread", child=child.spec.label)
        return released

    # -- liveness ----------------------------------------------------------------

    def _excuse_own_stall(self, now: float, *, since: float) -> None:
        """A child's silence counts only while the master was there to hear it. When
        the master itself could not run (ctrl-Z then fg, SIGSTOP of every process, a
        paused VM, a starved host), its children most likely could not either: the
        time the master lost is not held against them, or one stall would kill every
        child at the master's first look (they had no chance to beat yet)."""
        lost = (now - since) - self._asked_wait - STALL_SLACK_SECONDS
        if lost <= 0:
            return
        log.warning("castord.stalled", stalled_s=round(lost + STALL_SLACK_SECONDS, 3),
                    message="the master's loop was held up (stopped, paused, starved or blocked): "
                            "its children's silence in that time is excused")
        for child in self._live_children():
            child.last_beat = min(now, child.last_beat + lost)

    def _check_heartbeats(self, now: float) -> None:
        for child in self._live_children():
            if child.kill_deadline is not None:
                if now >= child.kill_deadline:
                    self._kill(child, signal.SIGKILL)  # and its group
                continue
            if now - child.last_beat > self.config.heartbeat_timeout:
                log.error("child.killed_unresponsive", child=child.spec.label, child_pid=child.pid,
                          silent_s=round(now - child.last_beat, 3))
                self._kill(child, signal.SIGABRT)
                child.kill_deadline = now + KILL_GRACE_SECONDS

    def _signal(self, child: Child, signum: int) -> None:
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass

    def _kill(self, child: Child, signum: int) -> None:
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass
        if signum == signal.SIGKILL:
            # What its task forked would otherwise live on, unsupervised.
            _kill_group(child.pgid)
        else:
            # A stopped (SIGSTOP) child only dies of SIGKILL; SIGCONT lets it act on others.
            try:
                os.kill(child.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    # -- signals ------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        intent = intent_for(signum, self.state)
        log.info("castord.signal", signal=name, intent=intent.value, state=self.state.value)
        if intent is Intent.DRAIN:
            self._begin_drain()
        elif intent is Intent.FAST_STOP:
            self._begin_fast_stop()
        elif intent is Intent.RELOAD:
            self._reload()
        elif intent is Intent.DEFER_RELOAD:
            self.reload_pending = True
            log.info("castord.reload_deferred", signal=name, state=self.state.value,
                     reason="a reload is under way; reloading again once it ends")
        elif intent is Intent.REFUSE_RELOAD:
            log.warning("castord.reload_refused", signal=name, state=self.state.value,
                        reason=f"castord is {self.state.value}")
        elif intent is Intent.GROW:
            self._grow()
        elif intent is Intent.SHRINK:
            self._shrink(name)
        elif intent is Intent.REFUSE_RESIZE:
            log.warning("castord.resize_refused", signal=name, state=self.state.value,
                        reason=f"castord is {self.state.value}")
        elif intent is Intent.REOPEN_LOGS:
            self._reopen_logs()

    def _reopen_logs(self) -> None:
        reopened = self.sink.reopen() if self.sink is not None else True
        for child in self._live_children():
            if child.ready:
                self._signal(child, signal.SIGUSR1)  # each child reopens its own stream
            else:
                # Until it is ready its USR1 handler may not be set, and USR1's
                # default action would kill it.
                child.reopen_logs = True
        if reopened:  # else castord.log_reopen_failed said why, on the old stream
            log.info("castord.logs_reopened")

    def _begin_drain(self) -> None:
        self.state = State.DRAINING
        self.reload_pending = False
        timeout = self.config.graceful_timeout
        self.drain_deadline = None if timeout is None else time.monotonic() + timeout
        self.notifier.send(STOPPING=1, STATUS="draining")
        log.info("castord.draining", children=len(self._live_children()), graceful_timeout=timeout)
        for child in self._live_children():  # both generations, during a reload
            child.draining = True
            self._send(child, "drain")

    def _begin_fast_stop(self) -> None:
        if self.state is not State.STOPPING:
            self.state = State.STOPPING
            self.reload_pending = False
            self.drain_deadline = None
            self.notifier.send(STOPPING=1, STATUS="stopping")
            log.info("castord.stopping", children=len(self._live_children()))
        for child in self._live_children():  # again on a repeated stop: it costs nothing
            child.draining = True
            child.stopped = True
            self._kill(child, signal.SIGKILL)

    def _check_drain_deadline(self, now: float) -> None:
        if self.drain_deadline is not None and now >= self.drain_deadline and self.state == State.DRAINING:
            log.warning("castord.graceful_timeout", children=len(self._live_children()))
            self._begin_fast_stop()

    def _reload(self) -> None:
        self.state = State.RELOADING
        old = [s for s in self.slots if not s.retired]
        for slot in old:
            slot.retired = True
            if slot.child is not None:
                slot.child.draining = True
                self._send(slot.child, "drain")
        log.info("castord.reloading", old_children=len(old), generation=self.generation + 1)
        self._spawn_generation()

    def _check_reload_done(self) -> None:
        """RELOADING ends when the last child of an older generation is gone."""
        if self.state is not State.RELOADING:
            return
        if any(s.generation < self.generation for s in self.slots):
            return
        self.state = State.RUNNING
        log.info("castord.reloaded", generation=self.generation)
        if self.reload_pending:
            self.reload_pending = False
            self._reload()

    def _grow(self) -> None:
        index = 1 + max((s.index for s in self.slots if s.role == PROCESS_WORKER), default=-1)
        slot = Slot(PROCESS_WORKER, index, self.generation)
        self.slots.append(slot)
        self._spawn(slot)
        log.info("castord.resized", process_children=self._process_count())

    def _shrink(self, signal_name: str) -> None:
        candidates = [s for s in self.slots if s.role == PROCESS_WORKER and not s.retired]
        if len(candidates) <= 1:
            log.warning("castord.resize_refused", signal=signal_name, state=self.state.value,
                        reason="keeping at least one process child")
            return
        slot = max(candidates, key=lambda s: s.index)
        slot.retired = True
        if slot.child is not None:
            slot.child.draining = True
            self._send(slot.child, "drain")
        log.info("castord.resized", process_children=self._process_count())

    # -- reporting ---------------------------------------------------------------

    def _announce(self, now: float) -> None:
        children = self._live_children()
        if not self.ready_sent and self.state.accepting and children and all(c.ready for c in children):
            self.ready_sent = True
            self._record()  # so `castord status` right after READY shows the children ready
            log.info("castord.ready", daemon_id=self.daemon_id, process_children=self._process_count(),
                     threads=self.config.threads, startup_s=round(time.time() - self.started_at, 3))
            self.notifier.send(READY=1, STATUS=self._status_line(), MAINPID=os.getpid())
            self._next_status = now + STATUS_SECONDS
            if self.on_ready is not None:
                self.on_ready()
        if now >= self._next_record:
            self._next_record = now + self.config.heartbeat_interval
            self._check_database()
            self._record()
        # STATUS= only once READY=1 went with the first one: before, systemd shows
        # "activating" and castord has nothing true to say about children and tasks.
        if now >= self._next_status and (self.ready_sent or not self.state.accepting):
            self._next_status = now + STATUS_SECONDS
            setproctitle(self._title())
            self.notifier.send(STATUS=self._status_line())
            if self.state == State.DRAINING and self.notifier.enabled:
                # Keep systemd's stop timeout from firing while the drain progresses.
                self.notifier.send(EXTEND_TIMEOUT_USEC=int(3 * STATUS_SECONDS * 1_000_000))
        if self._watchdog is not None and now >= self._next_watchdog:
            self._next_watchdog = now + self._watchdog
            self.notifier.send(WATCHDOG=1)

    def _check_database(self) -> None:
        """Stop if the database file was deleted or replaced under us (rm, or a restore
        that renamed another file into place): every connection castord and its
        children hold still writes to the old file, which nobody will read again."""
        if self._db_identity is None or self.state is State.STOPPING:
            return
        try:
            now = _file_identity(self._db_path)
        except OSError:  # cannot tell (a permission change on the directory): not a strike
            return
        if now == self._db_identity:
            self._db_strikes = 0
            return
        self._db_strikes += 1
        if self._db_strikes < DATABASE_STRIKES:
            return
        was = f"device {self._db_identity[0]} inode {self._db_identity[1]}"
        change = "missing" if now is None else f"replaced: {was}, now device {now[0]} inode {now[1]}"
        log.critical("castord.database_replaced", database=self._db_path, change=change,
                     message="the database file was deleted or replaced while castord ran; stopping so "
                             "that the service manager starts castord again on the file now at that path")
        self.exit_code = ExitCode.DATABASE_REPLACED
        self._begin_fast_stop()

    def _record(self) -> None:
        # A short wait: while another program holds a long write lock, the loop
        # (signals, heartbeats, respawns) must not stall for the store's 30 s.
        try:
            self.manager.store.record_daemon(
                self.daemon_id, host=socket.gethostname(), pid=os.getpid(), app=self.config.app,
                started_at=self.started_at, info=self.snapshot(), now=time.time(),
                lock_timeout=RECORD_LOCK_SECONDS)
            self._record_locked = False
            if time.monotonic() >= self._next_forget:
                self._next_forget = time.monotonic() + FORGET_EVERY_SECONDS
                self._forget_dead_daemons()
            if time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + WORKFLOW_SWEEP_SECONDS
                self._sweep_workflows()
        except StoreUnavailable as exc:
            if not self._record_locked:  # once per spell, not every heartbeat
                log.warning("castord.heartbeat_record_skipped", error=str(exc))
            self._record_locked = True
        except Exception:  # noqa: BLE001 - a busy database must not stop supervision
            log.exception("castord.heartbeat_record_failed")

    def _forget_dead_daemons(self) -> None:
        """Remove the rows of castords gone for DAEMON_FORGET_SECONDS (killed, their host
        lost): any castord on the store does it, so a fleet's view does not fill with
        the dead. Ages are the store's (on PostgreSQL, the server's clock)."""
        store = self.manager.store
        for row in store.daemons():
            if row["heartbeat_age"] > DAEMON_FORGET_SECONDS and row["id"] != self.daemon_id:
                store.remove_daemon(row["id"])
                log.info("castord.daemon_forgotten", host=row["host"], pid=row["pid"], app=row["app"],
                         heartbeat_age_s=round(row["heartbeat_age"], 1))

    def _sweep_workflows(self) -> None:
        """End or move on the running workflows whose advance was missed (a bug, or member
        rows deleted by hand): nothing should ever be found, so each fix is a warning."""
        try:
            fixed = self.manager.store.sweep_workflows(
                stale_after=WORKFLOW_STALE_SECONDS, now=time.time(), limit=WORKFLOW_SWEEP_LIMIT,
                lock_timeout=WORKFLOW_SWEEP_LOCK_SECONDS)
        except StoreUnavailable as exc:  # busy or away: the next round tries again
            log.warning("castord.workflow_sweep_skipped", error=str(exc))
            return
        except Exception:  # noqa: BLE001 - a sweep that fails must not stop supervision
            log.exception("castord.workflow_sweep_failed")
            return
        for fix in fixed:
            found: dict[str, int | None] = (
                {"missing": fix.missing} if fix.missing else {"remaining_now": fix.remaining_now})
            if fix.released:
                found["released"] = fix.released
            log.warning("workflow.advance_missed", workflow_id=fix.workflow_id, kind=fix.kind, step=fix.step,
                        state=str(fix.state), remaining_was=fix.remaining_was, **found)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "state": self.state.value,
            "workers": self._process_count(),
            "threads": self.config.threads,
            "queues": list(self.config.queues) if self.config.queues else None,
            "children": [
                {
                    "pid": c.pid, "role": c.spec.role, "index": c.spec.index,
                    "generation": c.spec.generation,
                    "state": "draining" if c.draining else ("ready" if c.ready else "booting"),
                    "running": c.info.get("running", []), "done": c.info.get("done", 0),
                    "rss_kb": c.info.get("rss_kb", 0), "heartbeat_age_s": round(now - c.last_beat, 3),
                }
                for c in self._live_children()
            ],
            "schedules": self.scheduler.next_ticks() if self.scheduler is not None else {},
        }

    def _status_line(self) -> str:
        busy = sum(len(c.info.get("running", [])) for c in self._live_children())
        # The master's totals: children come and go (a reload, a recycle, a crash).
        done = self.tally.ended()
        return f"{self.state.value}: {len(self._live_children())} children, {busy} tasks running, {done} done"

    def _title(self) -> str:
        return f"castord: master {self.config.app} [{self._process_count()} proc, {self.config.threads} thr]"

    def _process_count(self) -> int:
        return sum(1 for s in self.slots if s.role == PROCESS_WORKER and not s.retired)

    def _live_children(self) -> list[Child]:
        return [s.child for s in self.slots if s.child is not None]


def backoff(failures: int) -> float:
    """Seconds before restarting a slot after `failures` consecutive crashes."""
    if failures <= 1:
        return 0.0
    return min(0.25 * 2 ** (failures - 2), 30.0)


def describe_exit(code: int | None) -> dict[str, Any]:
    """Exit code or signal, in words an operator can act on."""
    if code is None:
        return {"exit_code": None}
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:  # a real-time signal has no name of its own
            name = f"signal {-code}"
        fields: dict[str, Any] = {"signal": name}
        if -code == signal.SIGKILL:
            fields["hint"] = "killed by SIGKILL: possibly out of memory"
        return fields
    return {"exit_code": code}


def _kill_group(pgid: int) -> None:
    """SIGKILL a child's process group (gone already, or never made: fine)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise


def _file_identity(path: str | None) -> tuple[int, int] | None:
    """(device, inode) of the database file, or None if there is none at `path`."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
