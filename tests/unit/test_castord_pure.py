"""castord's pure parts: signal table, backoff, exit descriptions, config, notify, pidfile."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from castord.cli import build_config
from castord.config import Config
from castord.errors import ExitCode, PidfileError
from castord.notify import Notifier, watchdog_interval
from castord.pidfile import Pidfile, pid_alive
from castord.signals import INTENTS, MASTER_SIGNALS, Intent, State, intent_for
from castord.supervisor import backoff, describe_exit


@pytest.mark.parametrize("signum,state,intent", [
    (signal.SIGTERM, State.RUNNING, Intent.DRAIN),
    (signal.SIGINT, State.RUNNING, Intent.DRAIN),
    (signal.SIGQUIT, State.RUNNING, Intent.FAST_STOP),
    (signal.SIGHUP, State.RUNNING, Intent.RELOAD),
    (signal.SIGTTIN, State.RUNNING, Intent.GROW),
    (signal.SIGTTOU, State.RUNNING, Intent.SHRINK),
    (signal.SIGUSR1, State.RUNNING, Intent.REOPEN_LOGS),
    # A reload: TERM drains both generations, resizes apply to the new one, a
    # second HUP waits for this reload to end.
    (signal.SIGTERM, State.RELOADING, Intent.DRAIN),
    (signal.SIGINT, State.RELOADING, Intent.DRAIN),
    (signal.SIGQUIT, State.RELOADING, Intent.FAST_STOP),
    (signal.SIGHUP, State.RELOADING, Intent.DEFER_RELOAD),
    (signal.SIGTTIN, State.RELOADING, Intent.GROW),
    (signal.SIGTTOU, State.RELOADING, Intent.SHRINK),
    # Winding down: a second TERM/INT goes fast; nothing may add children.
    (signal.SIGTERM, State.DRAINING, Intent.FAST_STOP),
    (signal.SIGINT, State.DRAINING, Intent.FAST_STOP),
    (signal.SIGQUIT, State.DRAINING, Intent.FAST_STOP),
    (signal.SIGHUP, State.DRAINING, Intent.REFUSE_RELOAD),
    (signal.SIGTTIN, State.DRAINING, Intent.REFUSE_RESIZE),
    (signal.SIGTTOU, State.DRAINING, Intent.REFUSE_RESIZE),
    (signal.SIGUSR1, State.DRAINING, Intent.REOPEN_LOGS),
    (signal.SIGTERM, State.STOPPING, Intent.FAST_STOP),
    (signal.SIGHUP, State.STOPPING, Intent.REFUSE_RELOAD),
    (signal.SIGTTIN, State.STOPPING, Intent.REFUSE_RESIZE),
    (signal.SIGUSR1, State.STOPPING, Intent.REOPEN_LOGS),
])
def test_signal_table(signum, state, intent):
    assert intent_for(signum, state) is intent


def test_every_signal_has_an_intent_in_every_state():
    for state in State:
        assert set(INTENTS[state]) == set(MASTER_SIGNALS), state
    # Only a running castord may add children.
    adds = {Intent.RELOAD, Intent.GROW, Intent.DEFER_RELOAD}
    for state in (State.DRAINING, State.STOPPING):
        assert not adds & set(INTENTS[state].values()), state
    assert not State.DRAINING.accepting and not State.STOPPING.accepting
    assert State.RUNNING.accepting and State.RELOADING.accepting


def test_backoff_is_immediate_then_capped():
    assert backoff(0) == backoff(1) == 0.0
    assert backoff(2) < backoff(3) < backoff(4)
    assert backoff(50) == 30.0


def test_exit_descriptions():
    assert describe_exit(-signal.SIGKILL) == {"signal": "SIGKILL",
                                              "hint": "killed by SIGKILL: possibly out of memory"}
    assert describe_exit(-signal.SIGABRT) == {"signal": "SIGABRT"}
    assert describe_exit(3) == {"exit_code": 3}
    assert describe_exit(-40) == {"signal": "signal 40"}  # a real-time signal: no name, no crash


def test_config_defaults_and_validation():
    config = build_config("a:m", workers=3)
    assert (config.workers, config.threads, config.queues, config.graceful_timeout) == (3, 6, None, None)
    assert build_config("a:m", workers=1, queues="a, b,,").queues == ("a", "b")
    with pytest.raises(ValueError, match="must be longer"):
        Config(app="a:m", workers=1, threads=1, heartbeat_interval=2, heartbeat_timeout=1)
    with pytest.raises(ValueError, match="run nothing"):
        Config(app="a:m", workers=0, threads=0)


def test_notify_sends_datagrams(tmp_path):
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    notifier = Notifier(path)
    assert notifier.send(READY=1, STATUS="up")
    assert server.recv(1024) == b"READY=1\nSTATUS=up"
    notifier.close()
    server.close()


@pytest.mark.timeout(10)
def test_notify_never_blocks_when_nobody_reads(tmp_path):
    # A reader that lags (here: never reads) fills the socket's queue; the master's
    # loop must go on (a blocking send once froze castord, SIGTERM included).
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    notifier = Notifier(path)
    sent = [notifier.send(STATUS=f"message {i}") for i in range(500)]
    assert sent[0] is True and sent[-1] is False  # the queue filled; later sends were dropped
    assert server.recv(1024) == b"STATUS=message 0"
    assert notifier.send(STATUS="again") is True  # room again once the reader reads
    notifier.close()
    server.close()


def test_notify_is_a_no_op_without_a_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled and notifier.send(READY=1) is False


def test_watchdog_interval(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 2.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None


def test_pidfile_exclusive_and_stale(tmp_path):
    path = str(tmp_path / "castord.pid")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(path, "w") as f:
        f.write(f"{dead.pid}\n")
    assert not pid_alive(dead.pid)
    first = Pidfile(path)
    first.acquire()  # the stale file is replaced
    assert Path(path).read_text().strip() == str(os.getpid())
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with open(path, "w") as f:
            f.write(f"{live.pid}\n")
        with pytest.raises(PidfileError, match=f"already running with pid {live.pid}"):
            Pidfile(path).acquire()
    finally:
        live.kill()
        live.wait()
    first.release()  # not ours any more: left alone
    assert os.path.exists(path)


def test_pidfile_in_a_missing_directory(tmp_path):
    with pytest.raises(PidfileError, match="cannot create pidfile"):
        Pidfile(str(tmp_path / "no" / "castord.pid")).acquire()


def test_status_render_shows_running_tasks_with_progress():
    from castord.control import render

    report = {"running": False, "running_tasks": [
        {"id": "0192-aaaa-bbbbcccc", "name": "tasks.resize", "attempt": 2, "progress": 0.4,
         "progress_message": "resized b.png", "cancel_requested": False},
        {"id": "0192-aaaa-ddddeeee", "name": "tasks.crawl", "attempt": 1, "progress": None,
         "progress_message": None, "cancel_requested": True},
    ]}
    lines = render(report).splitlines()
    assert lines[1] == "  running tasks.resize bbbbcccc attempt 2 40% resized b.png"
    assert lines[2] == "  running tasks.crawl ddddeeee attempt 1 (cancelling)"


# -- the master's judgement of an exited child (no processes: a stand-in for one) -----


class _Gone:
    """Stands in for a child process that has exited."""

    pid = 4_194_304 + 1  # above Linux's largest pid: nothing to signal by mistake


@pytest.fixture
def supervisor(tmp_path, monkeypatch):
    import castor
    from castord.supervisor import Supervisor

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    manager = castor.Manager(str(tmp_path / "app.db"))
    sup = Supervisor(Config(app="app:manager", workers=1, threads=0), manager)
    yield sup
    sup.signals.close()
    manager.close()


def _exited(sup, slot, code, *, ready=True, **said):
    from castord.children import ChildSpec
    from castord.supervisor import Child

    spec = ChildSpec(role="process-worker", index=0, generation=1, owner="nobody", app="app:manager",
                     threads=1, queues=None, lease=30.0, heartbeat_interval=1.0, max_tasks=None,
                     max_memory_mb=None, log_format="json", log_level="info", log_file=None)
    now = time.monotonic()
    sup._on_exit(slot, Child(spec, _Gone(), None, spawned_at=now, last_beat=now, ready=ready, **said), code)


@pytest.mark.parametrize("code", [0, 1, 3, 4, 5, 6, 7, -signal.SIGKILL, -40])
def test_an_exit_status_alone_is_a_crash_never_a_boot_or_database_failure(supervisor, code):
    from castord.supervisor import Slot

    slot = Slot("process-worker", 0, 1)
    for _ in range(6):  # more than MAX_BOOT_FAILURES in a row
        _exited(supervisor, slot, code)
    assert supervisor.exit_code == ExitCode.OK and supervisor.state is State.RUNNING
    assert slot.failures == 6  # each a young crash: restart backoff, nothing more


def test_what_a_child_said_decides(supervisor):
    from castord.supervisor import Slot

    slot = Slot("process-worker", 0, 1, failures=3)
    _exited(supervisor, slot, 5, farewell="task timeout")
    assert slot.failures == 0  # it left on purpose
    for _ in range(5):
        _exited(supervisor, slot, 0, database_error="disk I/O error")
    assert supervisor.exit_code == ExitCode.BOOT_FAILURES and supervisor.state is State.STOPPING


def test_dying_before_ready_is_a_boot_failure(supervisor):
    from castord.supervisor import Slot

    slot = Slot("process-worker", 0, 1)
    for _ in range(5):
        _exited(supervisor, slot, -signal.SIGSEGV, ready=False)
    assert supervisor.exit_code == ExitCode.BOOT_FAILURES


def test_a_draining_master_has_no_respawn_deadline(supervisor):
    from castord.supervisor import Slot

    supervisor.slots.append(Slot("process-worker", 0, 1, respawn_at=0.0))  # due long ago
    assert supervisor._timeout() == 0.0
    supervisor.state = State.DRAINING
    assert supervisor._timeout() > 0.5  # its loop waits for its children; it used to spin
