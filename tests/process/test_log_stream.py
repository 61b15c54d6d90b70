"""castord's log stream as an aggregator reads it (issue 13, "Logs").

castord runs with stdout and stderr on one file, as under systemd (both go to the
journal): every line must be JSON, whatever task code writes and however a task
ends; each task ends with exactly one line carrying SPEC §5's fields; stdlib
logging keeps `event` stable; journald gets priorities; the docs' jq pipeline
works on real output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

import castor
from tests.conftest import REPO, wait_until
from tests.process.leftovers import in_session

CASTORD = str(Path(sys.executable).parent / "castord")
END_EVENTS = ("task.succeeded", "task.failed", "task.cancelled")
TASK_FIELDS = ("task_id", "task_name", "queue", "attempt", "duration_ms", "status")

LOUDAPP = """
import ctypes, logging, os, subprocess, sys, time
import castor

print("printed while APP is imported")
manager = castor.Manager(os.environ["CASTOR_TEST_DB"])


@manager.task(mode="process", name="loud")
def loud(n):
    print(f"print {n}")
    print(f"to stderr {n}", file=sys.stderr)
    sys.stdout.write(f"half a line {n}")
    sys.stdout.write(" and its end\\n")
    os.write(1, f"fd1 {n}\\n".encode())
    os.write(2, f"fd2 {n}\\n".encode())
    libc = ctypes.CDLL(None)
    libc.puts(f"C puts {n}".encode())
    libc.fflush(None)
    subprocess.run(["echo", f"subprocess {n}"], check=True)
    logging.getLogger("acme.billing").warning("charged %s", n, extra={"customer": n, "cents": 250})
    return n


@manager.task(mode="thread", name="tloud")
def tloud(n):
    print(f"thread print {n}")
    logging.getLogger("acme.threads").info("from thread %s", n)
    return n


@manager.task(mode="thread", name="tboom", retries=0)
def tboom():
    raise ValueError("thread boom")


@manager.task(mode="process", name="pboom", retries=0)
def pboom():
    raise KeyError("process boom")


@manager.task(mode="process", name="lost")
def lost():
    os.kill(os.getpid(), 9)


@manager.task(mode="process", name="sleepy")
def sleepy(seconds):
    time.sleep(seconds)
    return seconds


@manager.task(mode="thread", name="tsleepy")
def tsleepy(seconds):
    for _ in range(int(seconds * 20)):  # a cancel is raised in this thread between sleeps
        time.sleep(0.05)
    return seconds


@manager.task(mode="process", name="slowpoke", timeout=0.5, retries=0)
def slowpoke():
    time.sleep(60)
"""


class Stream:
    """A castord whose stdout and stderr go to one file (`2>&1`, or the journal)."""

    def __init__(self, app_dir: Path, *extra: str, app: str = "loudapp:manager",
                 env: dict[str, str] | None = None, out: str = "stream.out"):
        self.out = app_dir / out
        self._file = open(self.out, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONPATH": f"{app_dir}{os.pathsep}{REPO}", **(env or {})}
        full_env.pop("JOURNAL_STREAM", None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [CASTORD, "start", app, "--log-format", "json", "--workers", "1", "--threads", "2", *extra],
            cwd=app_dir, env=full_env, start_new_session=True, stdout=self._file, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 30) -> int:
        """Its exit status, once it exits on its own."""
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._file.close()

    def lines(self) -> list[str]:
        return [line for line in self.out.read_text(errors="replace").splitlines() if line.strip()]

    def events(self, name: str | None = None) -> list[dict]:
        out = [json.loads(line) for line in self.lines()]
        return [e for e in out if name is None or e["event"] == name]

    def wait_event(self, name: str, timeout: float = 20, **match: object) -> dict:
        def found() -> dict | None:
            for line in self.lines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == name and all(event.get(k) == v for k, v in match.items()):
                    return event
            return None
        return wait_until(found, timeout, f"{name} {match} in castord's output")  # type: ignore[return-value]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self._file.close()


@pytest.fixture
def loud(app_dir: Path):
    (app_dir / "loudapp.py").write_text(textwrap.dedent(LOUDAPP))
    sys.modules.pop("loudapp", None)
    import loudapp

    started: list[Stream] = []

    def start(*extra: str, **kwargs: object) -> Stream:
        stream = Stream(app_dir, *extra, **kwargs)  # type: ignore[arg-type]
        started.append(stream)
        return stream

    yield loudapp, start
    for stream in started:
        stream.stop()
    loudapp.manager.close()
    sys.modules.pop("loudapp", None)


def assert_all_json(stream: Stream) -> list[dict]:
    events = []
    for line in stream.lines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a line of castord's output is not JSON: {line!r}")
    return events


@pytest.mark.timeout(120)
def test_everything_a_task_writes_comes_out_as_json_lines(loud):
    app, start = loud
    stream = start()
    stream.wait_event("castord.ready")
    assert app.loud.delay(7).join(timeout=20) == 7
    assert app.tloud.delay(8).join(timeout=20) == 8
    assert stream.stop() == 0
    events = assert_all_json(stream)
    outputs = [e for e in events if e["event"] == "task.output"]
    by_message = {e["message"]: e for e in outputs}
    for text, where in (("print 7", "stdout"), ("to stderr 7", "stderr"), ("half a line 7 and its end", "stdout"),
                        ("fd1 7", "stdout"), ("fd2 7", "stderr"), ("C puts 7", "stdout"),
                        ("subprocess 7", "stdout"), ("thread print 8", "stdout")):
        assert text in by_message, (text, [e["message"] for e in outputs])
        line = by_message[text]
        assert line["stream"] == where
        assert line["task_name"] == ("tloud" if "thread" in text else "loud"), line
        assert line["role"] == ("thread-host" if "thread" in text else "process-worker")
        assert line["level"] == ("warning" if where == "stderr" else "info")
    # What APP's import printed, in the master and in each child, is JSON too.
    imports = [e for e in outputs if e["message"] == "printed while APP is imported"]
    assert {e["role"] for e in imports} == {"master", "process-worker", "thread-host"}
    assert all("task_id" not in e for e in imports)


@pytest.mark.timeout(120)
def test_stdlib_logging_keeps_event_stable_with_message_logger_and_extras(loud):
    app, start = loud
    stream = start()
    stream.wait_event("castord.ready")
    assert app.loud.delay(3).join(timeout=20) == 3
    assert app.tloud.delay(4).join(timeout=20) == 4
    line = stream.wait_event("log", logger="acme.billing")
    assert line["message"] == "charged 3" and line["level"] == "warning"
    assert line["customer"] == 3 and line["cents"] == 250
    assert line["task_name"] == "loud" and line["task_id"]
    thread_line = stream.wait_event("log", logger="acme.threads")
    assert thread_line["message"] == "from thread 4" and thread_line["task_name"] == "tloud"


@pytest.mark.timeout(180)
def test_every_task_end_by_every_path_is_one_line_with_the_fields(loud):
    app, start = loud
    stream = start()
    stream.wait_event("castord.ready")
    tasks: dict[str, str] = {}  # task id -> the status it must end with
    ok = app.tloud.delay(1)
    tasks[ok.id] = "success"
    assert app.loud.delay(2).join(timeout=20) == 2
    tasks[stream.wait_event("task.succeeded", task_name="loud")["task_id"]] = "success"
    for failing in (app.tboom.delay(), app.pboom.delay()):
        with pytest.raises(Exception):  # noqa: B017 - the task's own exception
            failing.join(timeout=20)
        tasks[failing.id] = "failed"
    doomed = app.lost.delay()  # kills its child three times: failed by the master, WorkerLost
    with pytest.raises(castor.WorkerLost):
        doomed.join(timeout=60)
    tasks[doomed.id] = "failed"
    slow = app.slowpoke.delay()  # killed by its timeout in a process child
    with pytest.raises(castor.TaskTimeout):
        slow.join(timeout=60)
    tasks[slow.id] = "failed"
    for sleeper in (app.sleepy.delay(60), app.tsleepy.delay(60)):  # cancelled while running
        wait_until(lambda s=sleeper: s.status() == castor.TaskStatus.RUNNING, 20, "the task to start")
        sleeper.cancel()
        with pytest.raises(castor.TaskCancelled):
            sleeper.join(timeout=30)
        tasks[sleeper.id] = "cancelled"
    assert ok.join(timeout=20) == 1
    assert stream.stop() == 0
    events = assert_all_json(stream)
    ends = [e for e in events if e["event"] in END_EVENTS]
    per_task = Counter(e["task_id"] for e in ends)
    for task_id, status in tasks.items():
        assert per_task[task_id] == 1, (task_id, status, [e for e in ends if e["task_id"] == task_id])
        line = next(e for e in ends if e["task_id"] == task_id)
        for field in TASK_FIELDS:
            assert line.get(field) is not None, (field, line)
        assert line["status"] == status, line
        assert line["level"] == {"success": "info", "cancelled": "info", "failed": "error"}[status]
        if status == "failed":
            assert line["exc_type"] and line["exc_message"], line
    lost_line = next(e for e in ends if e["task_id"] == doomed.id)
    assert lost_line["exc_type"] == "castor.errors.WorkerLost" and lost_line["attempt"] == 3
    assert lost_line["role"] == "master"
    timeout_line = next(e for e in ends if e["task_id"] == slow.id)
    assert timeout_line["exc_type"] == "castor.errors.TaskTimeout"


@pytest.mark.timeout(60)
def test_a_task_whose_lease_expired_elsewhere_gets_its_end_line(loud, db_path):
    """A task whose worker vanished without a master to see it (another host's
    castord, killed) is failed by whichever worker finds its lease expired."""
    app, start = loud
    record_id = app.sleepy.delay(1).id
    other = castor.Manager(db_path)  # claims it as a castord on a dead host would have
    try:
        for loss in range(3):
            claimed = other.store.claim("dead-host:1:process-worker-0:x", mode="process", queues=None,
                                        limit=1, lease=0.01, now=0.0)
            assert [r.id for r in claimed] == [record_id]
            if loss < 2:  # two losses here; the third, found by castord's worker, fails it
                wait_until(lambda: other.store.recover_expired(now=0.0, max_lost=3), 10, "the lease to expire")
    finally:
        other.close()
    stream = start()
    line = stream.wait_event("task.failed", task_id=record_id)
    assert line["exc_type"] == "castor.errors.WorkerLost" and line["status"] == "failed"
    assert line["attempt"] == 3 and line["reason"] == "lease expired"


@pytest.mark.timeout(60)
def test_log_file_gets_task_output_as_json_and_stdout_stays_empty(loud, app_dir):
    app, start = loud
    log_file = app_dir / "castord.log"
    stream = start("--log-file", str(log_file))
    wait_until(lambda: log_file.exists() and "castord.ready" in log_file.read_text(), 20, "READY in the log")
    assert app.loud.delay(5).join(timeout=20) == 5
    assert stream.stop() == 0
    assert stream.lines() == []
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert {"print 5", "fd2 5", "C puts 5"} <= {e.get("message") for e in events if e["event"] == "task.output"}


@pytest.mark.timeout(60)
def test_journal_stream_gets_priorities_and_other_streams_do_not(loud, app_dir):
    """Under systemd, JOURNAL_STREAM names the socket stdout is: there each line
    starts with its syslog priority (journald reads and strips it). Here stdout is
    a file, named in JOURNAL_STREAM as systemd would name its socket."""
    app, start = loud
    out = app_dir / "stream.out"
    out.touch()
    st = os.stat(out)
    stream = start(env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    wait_until(lambda: "castord.ready" in out.read_text(), 20, "READY")
    with pytest.raises(ValueError):
        app.tboom.delay().join(timeout=20)
    assert app.loud.delay(1).join(timeout=20) == 1
    assert stream.stop() == 0
    priorities = {"debug": "7", "info": "6", "warning": "4", "error": "3", "critical": "2"}
    seen = Counter()
    for line in stream.lines():
        assert line.startswith("<") and line[2] == ">", line
        event = json.loads(line[3:])
        assert line[1] == priorities[event["level"]], line
        seen[event["event"], line[1]] += 1
    assert seen["task.failed", "3"] == 1 and seen["task.succeeded", "6"] == 1
    assert seen["task.output", "4"] >= 1  # stderr lines are warnings

    # The same variable, inherited by a castord whose stdout is another file: no prefix.
    other = Stream(app_dir, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, out="other.out")
    try:
        wait_until(lambda: "castord.ready" in other.out.read_text(), 20, "READY")
    finally:
        assert other.stop() == 0
    assert all(line.startswith("{") for line in other.lines())


@pytest.mark.timeout(60)
def test_a_failed_app_load_is_one_json_line(app_dir):
    (app_dir / "brokenapp.py").write_text("import no_such_module_here\n")
    stream = Stream(app_dir, app="brokenapp:manager")
    assert stream.wait() == 3
    lines = stream.lines()
    assert len(lines) == 1, lines
    event = json.loads(lines[0])
    assert event["event"] == "castord.app_load_failed" and event["level"] == "critical"
    assert "no_such_module_here" in event["error"]


@pytest.mark.timeout(60)
def test_a_failed_app_load_still_tells_a_terminal_on_stderr(app_dir):
    """stderr apart from the log (a terminal, `2>err`): the plain message is there."""
    (app_dir / "brokenapp.py").write_text("import no_such_module_here\n")
    result = subprocess.run([CASTORD, "start", "brokenapp:manager", "--log-format", "json"], cwd=app_dir,
                            capture_output=True, text=True, timeout=50,
                            env={**os.environ, "PYTHONPATH": f"{app_dir}{os.pathsep}{REPO}"})
    assert result.returncode == 3
    assert result.stderr.strip().startswith("castord: cannot load APP:"), result.stderr
    assert [json.loads(line)["event"] for line in result.stdout.splitlines()] == ["castord.app_load_failed"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["drain", "fast stop", "reload then drain"])
def test_castord_leaves_no_process_behind_when_it_exits(loud, how):
    """systemd (KillMode=mixed) SIGKILLs whatever is left in the unit once the main
    process exits, and logs it: at the moment castord's master is gone, nothing it
    started may be alive (the fork server included)."""
    app, start = loud
    stream = start()
    stream.wait_event("castord.ready")
    assert app.tloud.delay(1).join(timeout=20) == 1
    sid = stream.proc.pid
    assert len(in_session(sid)) >= 4  # master, fork server, two children
    if how == "reload then drain":
        stream.proc.send_signal(signal.SIGHUP)
        stream.wait_event("castord.reloaded")
    stream.proc.send_signal(signal.SIGTERM)
    if how == "fast stop":
        stream.proc.send_signal(signal.SIGTERM)
    assert stream.proc.wait(timeout=30) == 0
    left = in_session(sid)
    assert left == [], left


@pytest.mark.timeout(60)
def test_a_failed_start_leaves_no_process_behind(app_dir):
    (app_dir / "brokenapp.py").write_text("raise SystemExit('no')\n")
    stream = Stream(app_dir, app="brokenapp:manager")
    sid = stream.proc.pid
    assert stream.wait() == 3
    assert in_session(sid) == []
