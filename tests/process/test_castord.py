"""castord for real: a real daemon, real signals, NOTIFY_SOCKET bound by the test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_until

CASTORD = str(Path(sys.executable).parent / "castord")


class Castord:
    """One castord started by a test, stopped by its pid."""

    def __init__(self, app_dir: Path, name: str = "castord"):
        self.app_dir = app_dir
        self.log_file = app_dir / f"{name}.log"
        self.sock_path = str(app_dir / f"{name}.notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.notes: list[str] = []

    def start(self, *extra: str, app: str = "testapp:manager", env: dict[str, str] | None = None) -> Castord:
        args = [CASTORD, "start", app, "--log-format", "json", "--log-file", str(self.log_file), *extra]
        if not any(a.startswith("--workers") for a in extra):
            args += ["--workers", "2"]
        if not any(a.startswith("--threads") for a in extra):
            args += ["--threads", "2"]
        full_env = {**os.environ, "PYTHONPATH": f"{self.app_dir}{os.pathsep}{REPO}",
                    "NOTIFY_SOCKET": self.sock_path, **(env or {})}
        self.proc = subprocess.Popen(args, cwd=self.app_dir, env=full_env, start_new_session=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_note(self, text: str, timeout: float = 15, after: int = 0) -> str:
        """Wait for a notify datagram containing `text` (from the after-th one on)."""
        deadline = time.monotonic() + timeout
        while True:
            for note in self.notes[after:]:
                if text in note:
                    return note
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {text!r} from castord within {timeout} s; got {self.notes}")
            self.sock.settimeout(remaining)
            try:
                self.notes.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def events(self, name: str | None = None) -> list[dict]:
        if not self.log_file.exists():
            return []
        lines = [json.loads(line) for line in self.log_file.read_text().splitlines() if line.strip()]
        return [e for e in lines if name is None or e["event"] == name]

    def wait_event(self, name: str, timeout: float = 15, count: int = 1, **match: object) -> list[dict]:
        def found() -> list[dict]:
            hits = [e for e in self.events(name) if all(e.get(k) == v for k, v in match.items())]
            return hits if len(hits) >= count else []
        return wait_until(found, timeout, f"{count} x {name} {match} in castord's log")  # type: ignore[return-value]

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream:
                    stream.close()
        self.sock.close()


@pytest.fixture
def daemons(app_dir):
    started: list[Castord] = []

    def make(name: str = "castord") -> Castord:
        d = Castord(app_dir, name)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


def marker_pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def run_cli(app_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CASTORD, *args], cwd=app_dir, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": f"{app_dir}{os.pathsep}{REPO}"})


@pytest.mark.timeout(60)
def test_ready_status_then_stop_drains(daemons, app_dir):
    import testapp

    d = daemons().start()
    d.wait_note("READY=1")
    assert "STATUS=" in d.wait_note("STATUS=")
    assert testapp.add.delay(2, 3).join(timeout=10) == 5
    assert testapp.version.delay().join(timeout=10) == 1
    testapp.add.apply_async((1, 1), countdown=3600, queue="later")
    status = run_cli(app_dir, "status", "testapp:manager", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["running"] and report["pid"] == d.pid
    roles = sorted(c["role"] for c in report["children"])
    assert roles == ["process-worker", "process-worker", "thread-host"]
    assert report["queue_depth"] == {"later": 1}
    assert report["counts"]["success"] == 2
    human = run_cli(app_dir, "status", "testapp:manager")
    assert "castord is running" in human.stdout and "thread-host 0" in human.stdout
    stop = run_cli(app_dir, "stop", "testapp:manager", "--timeout", "20")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert d.wait_exit(5) == 0
    d.wait_note("STOPPING=1")
    after = run_cli(app_dir, "status", "testapp:manager")
    assert after.returncode == 3 and "not running" in after.stdout


@pytest.mark.timeout(60)
def test_sigkill_a_process_child_mid_task(daemons, app_dir):
    import testapp

    d = daemons().start("--workers", "1")
    d.wait_note("READY=1")
    marker = app_dir / "crash.marker"
    task = testapp.crash_once.delay(str(marker))
    wait_until(lambda: marker_pids(marker), 15, "the task to start")
    victim = marker_pids(marker)[0]
    os.kill(victim, signal.SIGKILL)
    assert task.join(timeout=20) == "second attempt"
    assert task.attempts == 2
    assert task.lost == 1 and task in testapp.manager.dirty()  # the seed's "dirty" task
    exited = d.wait_event("child.exited", child_pid=victim)[0]
    assert exited["signal"] == "SIGKILL" and "out of memory" in exited["hint"]
    assert exited["expected"] is False and exited["tasks_returned"] == 1
    spawned = [e["child_pid"] for e in d.events("child.spawned") if e["child"] == "process-worker 0"]
    assert len(spawned) == 2 and spawned[-1] != victim
    assert marker_pids(marker)[-1] == spawned[-1]  # the replacement ran it


@pytest.mark.timeout(60)
def test_sigstopped_child_is_killed_and_replaced(daemons, app_dir):
    import testapp

    d = daemons().start("--workers", "1", "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.5")
    d.wait_note("READY=1")
    marker = app_dir / "stop.marker"
    task = testapp.crash_once.delay(str(marker))
    wait_until(lambda: marker_pids(marker), 15, "the task to start")
    victim = marker_pids(marker)[0]
    os.kill(victim, signal.SIGSTOP)
    killed = d.wait_event("child.killed_unresponsive", timeout=15)[0]
    assert killed["child_pid"] == victim
    assert task.join(timeout=20) == "second attempt"
    assert len(marker_pids(marker)) == 2


@pytest.mark.timeout(60)
def test_a_stall_of_the_whole_castord_kills_no_child(daemons, app_dir):
    """ctrl-Z then fg, SIGSTOP of every process, a paused VM: the master could not
    watch either, so at its first look after it its children, silent through the stall
    like itself, are not killed as unresponsive (chaos's stall_group once cost a task
    a third loss that way)."""
    import testapp

    d = daemons().start("--workers", "1", "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.5")
    d.wait_note("READY=1")
    status = run_cli(app_dir, "status", "testapp:manager", "--json")
    assert status.returncode == 0, status.stderr
    children = sorted(c["pid"] for c in json.loads(status.stdout)["children"])
    family = [d.pid, *children]  # the master first: it must not see its children stop
    for pid in family:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(3.0)  # the stall itself, twice --heartbeat-timeout
    for pid in family:  # the master first again: its first look comes before any beat
        os.kill(pid, signal.SIGCONT)
    stalled = d.wait_event("castord.stalled")[0]
    assert stalled["stalled_s"] >= 2.5
    assert testapp.add.delay(2, 3).join(timeout=20) == 5
    assert d.events("child.killed_unresponsive") == []
    after = run_cli(app_dir, "status", "testapp:manager", "--json")
    assert sorted(c["pid"] for c in json.loads(after.stdout)["children"]) == children


@pytest.mark.timeout(90)
def test_sigterm_finishes_critical_tasks_and_requeues_daemon_ones(daemons, app_dir):
    import testapp

    d = daemons().start("--workers", "2")
    d.wait_note("READY=1")
    crit_marker, exp_marker = app_dir / "critical.marker", app_dir / "expendable.marker"
    critical = testapp.critical.delay(2.0, str(crit_marker))
    expendable = testapp.expendable.delay(str(exp_marker))
    wait_until(lambda: marker_pids(crit_marker) and marker_pids(exp_marker), 15, "both tasks to run")
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0
    assert critical.status() == "success" and critical.join(timeout=1) == "finished"
    info = expendable.info()
    assert info.status == "pending" and info.attempts == 0  # requeued, attempt not counted
    requeued = [e for e in d.events("task.requeued") if e["task_id"] == expendable.id]
    assert requeued and requeued[0]["reason"] == "drained"
    d2 = daemons("castord2").start("--workers", "1")
    assert expendable.join(timeout=20) == "rerun"
    assert expendable.attempts == 1
    d2.stop()


@pytest.mark.timeout(60)
def test_second_sigterm_stops_fast_and_loses_nothing(daemons, app_dir):
    import testapp

    d = daemons().start("--workers", "1")
    d.wait_note("READY=1")
    marker = app_dir / "long.marker"
    task = testapp.critical.delay(60, str(marker))
    wait_until(lambda: marker_pids(marker), 15, "the task to start")
    d.signal(signal.SIGTERM)
    d.wait_event("castord.draining")
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait_exit(15) == 0
    assert time.monotonic() - started < 10
    info = task.info()
    assert info.status == "pending" and info.attempts == 0


@pytest.mark.timeout(90)
def test_sigkill_the_master_under_load_then_restart(daemons, app_dir):
    import testapp

    tasks = testapp.add.map([(i, i) for i in range(300)]) + testapp.tadd.map([(i, 1) for i in range(300)])
    # A short lease, so the killed master's claims expire soon (6 s: the shortest
    # castord takes with these heartbeat settings).
    short_lease = ("--lease", "6", "--heartbeat-interval", "0.5", "--heartbeat-timeout", "1.5")
    d = daemons().start("--workers", "2", *short_lease)
    d.wait_note("READY=1")
    wait_until(lambda: testapp.manager.count("success") >= 50, 20, "some tasks to finish")
    d.signal(signal.SIGKILL)
    d.wait_exit(10)
    d2 = daemons("castord2").start("--workers", "2", *short_lease)
    d2.wait_note("READY=1")
    assert [t.join(timeout=30) for t in tasks[:300]] == [2 * i for i in range(300)]
    assert [t.join(timeout=30) for t in tasks[300:]] == [i + 1 for i in range(300)]
    assert testapp.manager.count("success") == 600


@pytest.mark.timeout(30)
def test_app_import_error_exits_3_quickly(app_dir):
    started = time.monotonic()
    result = run_cli(app_dir, "start", "nosuchmodule:manager", "--log-format", "json")
    assert result.returncode == 3
    assert time.monotonic() - started < 5
    assert "cannot import 'nosuchmodule'" in result.stderr


@pytest.mark.timeout(30)
def test_bad_options_exit_2(app_dir):
    result = run_cli(app_dir, "start", "testapp:manager", "--workers", "-1")
    assert result.returncode == 2 and "--workers" in result.stderr
    result = run_cli(app_dir, "start", "testapp:manager", "--heartbeat-interval", "5",
                     "--heartbeat-timeout", "2")
    assert result.returncode == 2 and "must be longer" in result.stderr


@pytest.mark.timeout(60)
def test_a_pidfile_held_by_a_live_castord_is_refused(daemons, app_dir):
    import testapp

    parked = testapp.add.apply_async((1, 2), countdown=3600)  # committed before: must stay pending
    pidfile = str(app_dir / "castord.pid")
    d = daemons().start("--pidfile", pidfile, "--workers", "1")
    d.wait_note("READY=1")
    assert Path(pidfile).read_text().strip() == str(d.pid)
    second = run_cli(app_dir, "start", "testapp:manager", "--pidfile", pidfile, "--workers", "1",
                     "--log-format", "json")
    assert second.returncode == 1 and f"already running with pid {d.pid}" in second.stderr
    assert "Traceback" not in second.stderr and parked.status() == "pending"
    assert testapp.add.delay(2, 2).join(timeout=10) == 4  # the first castord is unaffected
    status = run_cli(app_dir, "status", "--pidfile", pidfile, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["pid"] == d.pid
    d.signal(signal.SIGTERM)
    assert d.wait_exit(20) == 0
    assert not Path(pidfile).exists()
    assert run_cli(app_dir, "status", "--pidfile", pidfile).returncode == 3


@pytest.mark.timeout(60)
def test_ttin_ttou_resize_the_process_pool(daemons, app_dir):
    d = daemons().start("--workers", "1")
    d.wait_note("READY=1")
    d.signal(signal.SIGTTIN)
    d.wait_event("castord.resized", process_children=2)
    d.wait_event("child.spawned", child="process-worker 1")
    d.signal(signal.SIGTTOU)
    d.wait_event("castord.resized", process_children=1)
    d.wait_event("child.exited", child="process-worker 1", expected=True)


@pytest.mark.timeout(60)
def test_max_tasks_per_child_recycles(daemons, app_dir):
    import testapp

    d = daemons().start("--workers", "1", "--max-tasks-per-child", "5")
    d.wait_note("READY=1")
    assert [t.join(timeout=20) for t in testapp.add.map([(i, 0) for i in range(12)])] == list(range(12))
    d.wait_event("child.retiring", count=2)
    spawned = [e for e in d.events("child.spawned") if e["child"] == "process-worker 0"]
    assert len(spawned) >= 3


@pytest.mark.timeout(60)
def test_hup_reloads_changed_task_code(daemons, app_dir):
    import testapp

    d = daemons().start("--workers", "1")
    d.wait_note("READY=1")
    assert testapp.version.delay().join(timeout=10) == 1
    source = (app_dir / "testapp.py").read_text().replace(
        'def version():\n    return 1', 'def version():\n    return 2')
    (app_dir / "testapp.py").write_text(source)
    d.signal(signal.SIGHUP)
    d.wait_event("castord.reloading")
    d.wait_event("child.exited", child="thread-host 0", expected=True)
    assert testapp.version.delay().join(timeout=10) == 2


@pytest.mark.timeout(60)
def test_json_logs_and_process_titles(daemons, app_dir):
    import testapp

    d = daemons().start("--workers", "1", "--threads", "2")
    d.wait_note("READY=1")
    with pytest.raises(ValueError):
        testapp.boom.delay("bad").join(timeout=10)
    failed = d.wait_event("task.failed")[0]
    for key in ("timestamp", "level", "event", "pid", "role", "task_id", "task_name", "queue", "attempt",
                "duration_ms", "status", "exc_type", "exc_message"):
        assert key in failed, key
    assert failed["role"] == "process-worker" and failed["exc_type"] == "builtins.ValueError"
    for event in d.events():
        assert event["timestamp"].endswith("Z") and event["role"] in (
            "master", "process-worker", "thread-host")
    titles = {}
    for e in d.events("child.spawned"):
        titles[e["child"]] = Path(f"/proc/{e['child_pid']}/cmdline").read_bytes().decode()
    titles["master"] = Path(f"/proc/{d.pid}/cmdline").read_bytes().decode()
    assert titles["master"].startswith("castord: master testapp:manager [1 proc, 2 thr]")
    assert titles["process-worker 0"].startswith("castord: process-worker 0")
    assert titles["thread-host 0"].startswith("castord: thread-host 0")


@pytest.mark.timeout(60)
def test_process_task_past_its_timeout_fails_and_the_child_is_replaced(daemons, app_dir):
    import testapp

    import castor

    d = daemons().start("--workers", "1")
    d.wait_note("READY=1")
    marker = app_dir / "timeout.marker"
    task = testapp.critical.apply_async((30, str(marker)), timeout=1)
    started = time.monotonic()
    with pytest.raises(castor.TaskTimeout, match="ran past its timeout of 1 s"):
        task.join(timeout=20)
    assert time.monotonic() - started < 10
    victim = marker_pids(marker)[0]
    exited = d.wait_event("child.exited", child_pid=victim)[0]
    assert exited["exit_code"] == 5 and exited["expected"] is True
    d.wait_event("child.spawned", count=2, child="process-worker 0")
    assert testapp.add.delay(1, 1).join(timeout=10) == 2  # the replacement works


@pytest.mark.timeout(60)
def test_thread_task_past_its_timeout_gets_task_timeout(daemons, app_dir):
    import testapp

    import castor

    d = daemons().start("--workers", "1", "--threads", "2")
    d.wait_note("READY=1")
    with pytest.raises(castor.TaskTimeout):
        testapp.spin.apply_async((30,), timeout=0.5).join(timeout=20)
    assert testapp.version.delay().join(timeout=10) == 1  # the thread host lives on


@pytest.mark.timeout(60)
def test_task_code_logging_comes_out_as_json_with_task_context(daemons, app_dir):
    import testapp

    d = daemons().start("--workers", "1", "--threads", "1")
    d.wait_note("READY=1")
    task = testapp.chatty.delay("hello from the task")
    assert task.join(timeout=10) == "logged"
    line = d.wait_event("log", message="hello from the task")[0]
    assert line["task_id"] == task.id and line["task_name"] == "chatty"
    assert line["role"] == "thread-host" and line["level"] == "warning"


PRINTAPP = """
import sys
from testapp import manager

@manager.task(mode="process", name="shout")
def shout(words):
    print(words)
    print(words.upper(), file=sys.stderr)
    return words

@manager.task(mode="thread", name="tshout")
def tshout(words):
    print(words)
    return words
"""


@pytest.mark.timeout(60)
def test_capture_output_sends_task_prints_to_the_log_file(daemons, app_dir):
    (app_dir / "printapp.py").write_text(PRINTAPP)
    import printapp

    d = daemons().start("--workers", "1", "--threads", "1", "--capture-output", app="printapp:manager")
    d.wait_note("READY=1")
    assert printapp.shout.delay("printed in a process child").join(timeout=10)
    assert printapp.tshout.delay("printed in the thread host").join(timeout=10)
    # JSON lines, with the task's context and the stream (--capture-output or not:
    # in JSON mode output is always captured).
    outputs = {e["message"]: e for e in d.events("task.output")}
    for text, name, stream in (("printed in a process child", "shout", "stdout"),
                               ("PRINTED IN A PROCESS CHILD", "shout", "stderr"),
                               ("printed in the thread host", "tshout", "stdout")):
        assert outputs[text]["task_name"] == name and outputs[text]["stream"] == stream
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    assert b"printed" not in d.proc.stdout.read()


@pytest.mark.timeout(60)
def test_capture_output_in_console_mode_sends_raw_prints_to_the_log_file(daemons, app_dir):
    (app_dir / "printapp.py").write_text(PRINTAPP)
    sys.modules.pop("printapp", None)  # the previous test's, on its own database
    import printapp

    d = daemons().start("--workers", "1", "--threads", "1", "--capture-output", "--log-format", "console",
                        app="printapp:manager")
    d.wait_note("READY=1")
    assert printapp.shout.delay("printed in a process child").join(timeout=10)
    wait_until(lambda: "\nPRINTED IN A PROCESS CHILD\n" in d.log_file.read_text(), 10, "the print in the file")
    d.signal(signal.SIGTERM)
    assert d.wait_exit() == 0
    assert b"printed" not in d.proc.stdout.read()


def test_capture_output_in_console_mode_without_a_log_file_exits_2(app_dir):
    result = run_cli(app_dir, "start", "testapp:manager", "--capture-output", "--log-format", "console")
    assert result.returncode == 2 and "--capture-output with --log-format console needs --log-file" in result.stderr


@pytest.mark.timeout(60)
def test_watchdog_and_usr1_log_reopen(daemons, app_dir):
    d = daemons().start("--workers", "1", "--threads", "0", env={"WATCHDOG_USEC": "400000"})
    d.wait_note("READY=1")
    d.wait_note("WATCHDOG=1", timeout=5)
    rotated = app_dir / "castord.log.1"
    d.log_file.rename(rotated)
    d.signal(signal.SIGUSR1)
    wait_until(lambda: d.log_file.exists(), 10, "castord to reopen its log file")
    d.wait_event("castord.logs_reopened")
    assert "castord.ready" in rotated.read_text()
    import testapp

    # The children reopen too (at their next heartbeat): a child's line after the
    # rotation lands in the new file.
    def child_logged_to_new_file() -> bool:
        with pytest.raises(ValueError):
            testapp.boom.delay("after rotation").join(timeout=10)
        return bool(d.events("task.failed"))

    wait_until(child_logged_to_new_file, 15, "a child's line in the new log file", interval=0.2)
    failed = d.events("task.failed")[0]
    assert failed["role"] == "process-worker" and failed["exc_message"] == "after rotation"


@pytest.mark.timeout(60)
def test_drain_extends_systemds_stop_timeout_while_critical_work_runs(daemons, app_dir):
    import testapp

    d = daemons().start("--workers", "1", "--threads", "0")
    d.wait_note("READY=1")
    marker = app_dir / "slow.marker"
    task = testapp.critical.delay(7, str(marker))
    wait_until(lambda: marker_pids(marker), 15, "the task to start")
    d.signal(signal.SIGTERM)
    d.wait_note("STOPPING=1")
    d.wait_note("EXTEND_TIMEOUT_USEC=", timeout=10)
    assert d.wait_exit(30) == 0
    assert task.status() == "success"


@pytest.mark.timeout(60)
def test_detach_returns_once_ready_and_stop_by_pidfile(app_dir):
    pidfile = str(app_dir / "bg.pid")
    log = str(app_dir / "bg.log")
    result = run_cli(app_dir, "start", "testapp:manager", "--detach", "--pidfile", pidfile, "--workers", "1",
                     "--threads", "0", "--log-file", log)
    assert result.returncode == 0, result.stderr
    assert "started in the background" in result.stdout
    pid = int(Path(pidfile).read_text())
    try:
        status = run_cli(app_dir, "status", "--pidfile", pidfile)
        assert status.returncode == 0 and f"pid {pid}" in status.stdout
        # Written as READY is sent, not a heartbeat later: the child shows as ready at once.
        report = json.loads(run_cli(app_dir, "status", "--pidfile", pidfile, "--json").stdout)
        assert [c["state"] for c in report["children"]] == ["ready"]
        stop = run_cli(app_dir, "stop", "--pidfile", pidfile, "--timeout", "30")
        assert stop.returncode == 0, stop.stdout + stop.stderr
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    assert not Path(pidfile).exists()


@pytest.mark.timeout(60)
def test_detach_reports_a_start_failure(app_dir):
    result = run_cli(app_dir, "start", "nosuchmodule:manager", "--detach", "--pidfile",
                     str(app_dir / "x.pid"), "--log-file", str(app_dir / "x.log"))
    assert result.returncode == 3 and "failed to start (exit 3)" in result.stderr


@pytest.mark.timeout(60)
def test_castor_command_runs_the_engine_in_the_foreground(app_dir):
    import testapp

    sock_path = str(app_dir / "castor.notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(20)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "castor"), "--workers", "1", "--threads", "1", "testapp:manager"],
        cwd=app_dir, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": f"{app_dir}{os.pathsep}{REPO}", "NOTIFY_SOCKET": sock_path})
    try:
        while b"READY=1" not in sock.recv(4096):
            pass
        assert testapp.add.delay(20, 22).join(timeout=10) == 42
        proc.send_signal(signal.SIGINT)  # Ctrl+C drains
        assert proc.wait(timeout=30) == 0
        out = proc.stdout.read().decode()
        assert "castord.draining" in out and "castord.stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        sock.close()


@pytest.mark.timeout(90)
def test_children_that_keep_failing_to_boot_stop_castord_with_4(daemons, app_dir):
    # Loads fine in the master, fails in every child (the child's title says what it is).
    (app_dir / "childfails.py").write_text(
        "from setproctitle import getproctitle\n"
        "if getproctitle().startswith('castord: process-worker'):\n"
        "    raise RuntimeError('no GPU in this child')\n"
        "from testapp import manager\n")
    d = daemons().start("--workers", "1", "--threads", "0", app="childfails:manager")
    assert d.wait_exit(60) == 4
    failures = d.events("child.boot_failed")
    assert len(failures) == 5 and "no GPU in this child" in failures[0]["error"]
    assert d.events("castord.boot_failures")


@pytest.mark.timeout(60)
def test_max_memory_per_child_retires_the_child(daemons, app_dir):
    d = daemons().start("--workers", "1", "--threads", "0", "--max-memory-per-child", "1")
    d.wait_note("READY=1")
    retiring = d.wait_event("child.retiring", timeout=15)[0]
    assert "max-memory-per-child" in retiring["reason"] or retiring.get("limit_mb") == 1
    d.wait_event("child.spawned", count=2, child="process-worker 0")


@pytest.mark.timeout(60)
def test_graceful_timeout_kills_and_requeues_what_remains(daemons, app_dir):
    import testapp

    d = daemons().start("--workers", "1", "--threads", "0", "--graceful-timeout", "1")
    d.wait_note("READY=1")
    marker = app_dir / "stuck.marker"
    task = testapp.critical.delay(60, str(marker))
    wait_until(lambda: marker_pids(marker), 15, "the task to start")
    d.signal(signal.SIGTERM)
    assert d.wait_exit(20) == 0
    d.wait_event("castord.graceful_timeout")
    info = task.info()
    assert info.status == "pending" and info.attempts == 0


@pytest.mark.timeout(60)
def test_quit_stops_fast(daemons, app_dir):
    import testapp

    d = daemons().start("--workers", "1", "--threads", "0")
    d.wait_note("READY=1")
    marker = app_dir / "quit.marker"
    task = testapp.critical.delay(60, str(marker))
    wait_until(lambda: marker_pids(marker), 15, "the task to start")
    d.signal(signal.SIGQUIT)
    assert d.wait_exit(15) == 0
    assert task.info().status == "pending"


@pytest.mark.timeout(90)
def test_two_castords_on_one_database_share_the_work(daemons, app_dir):
    import testapp

    first = daemons("first").start("--workers", "1", "--threads", "0", "--pidfile", str(app_dir / "a.pid"))
    second = daemons("second").start("--workers", "1", "--threads", "0", "--pidfile", str(app_dir / "b.pid"))
    first.wait_note("READY=1")
    second.wait_note("READY=1")
    # Tasks long enough that one castord cannot take them all in prefetched batches
    # (castor/worker.py claims several at once only while tasks are short).
    tasks = testapp.slow.map([(0.05,) for _ in range(40)])
    assert [t.join(timeout=30) for t in tasks] == [0.05] * 40
    owners = {t.info().owner.split(":")[1] for t in tasks}  # the master pid is in the owner
    assert owners == {str(first.pid), str(second.pid)}
