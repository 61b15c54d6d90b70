"""The shipped systemd/castord@.service under a real systemd (PID 1 of a container).

A Debian trixie root (scripts/systemd-root; `.ci/run` builds it) is booted with
`systemd-nspawn -b`; castor is installed in it from this checkout, and the app
tests/system/demo/demoapp.py is set up as docs/deployment.md says, as the instance
`castord@demo`, with the unit copied unchanged. The tests drive it with systemctl and
read what systemd and journald say: start (activating until READY), STATUS,
reload, stop during a task, the watchdog, and a failed task in `journalctl -p err`.

Skipped (outside CI) without root, systemd-nspawn or a built root, or where nspawn cannot
boot; CI must run them. Each test starts castord afresh (`systemctl restart`) and reads the
journal from a cursor taken after that, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, wait_until
from tests.docs.runner import parse as parse_page
from tests.system.nspawn import Container, root_or_skip

UNIT = "castord@demo"
STAGE = "/run/castor-stage"  # the test's files, bound read-only into the container
STATE = "/var/lib/demo"  # the unit's StateDirectory= (ReadWritePaths=/var/lib/%i)
HOLD = f"{STATE}/hold-children"  # demoapp.py: children wait at import while it exists
PYTHON = "/opt/castor/venv/bin/python"
ENV_FILE = """\
CASTORD_APP=demoapp:manager
CASTORD_WORKERS=2
CASTORD_THREADS=2
CASTORD_LOG_FORMAT=json
"""
CHILD_TITLES = ("castord: process-worker", "castord: thread-host")


@dataclass
class Demo:
    """castord@demo in a booted container, and the test's ways to look at it."""

    box: Container

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.box.run("systemctl", "--no-pager", *args, check=check).stdout

    def show(self, *properties: str) -> dict[str, str]:
        out = self.systemctl("show", UNIT, "--timestamp=us+utc", "-p", ",".join(properties))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def state(self) -> str:
        return self.show("ActiveState")["ActiveState"]

    def restart(self) -> None:
        """A fresh castord (its counts from zero), active: `systemctl restart` waits for READY."""
        self.systemctl("reset-failed", UNIT, check=False)
        self.systemctl("restart", UNIT)
        assert self.state() == "active", self.systemctl("status", UNIT, check=False)

    def cursor(self) -> str:
        """Where the journal ends now: read only what comes after it."""
        out = self.box.run("journalctl", "-n", "1", "-o", "json", "--no-pager").stdout
        return json.loads(out.splitlines()[-1])["__CURSOR"]

    def journal(self, cursor: str, *options: str) -> list[dict[str, Any]]:
        """The unit's journal entries after `cursor` (systemd's lines about it included)."""
        out = self.box.run("journalctl", "-u", UNIT, f"--after-cursor={cursor}", "-o", "json",
                           "--no-pager", *options).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def messages(self, cursor: str, *options: str) -> list[str]:
        return [str(entry.get("MESSAGE", "")) for entry in self.journal(cursor, *options)]

    def events(self, cursor: str, name: str) -> list[dict[str, Any]]:
        """castord's JSON log lines called `name` after `cursor`."""
        found = []
        for message in self.messages(cursor):
            try:
                line = json.loads(message)
            except ValueError:
                continue  # systemd's own lines about the unit
            if isinstance(line, dict) and line.get("event") == name:
                found.append(line)
        return found

    def delay(self, task: str, *args: str) -> str:
        out = self.box.run(PYTHON, "/srv/demo/client.py", "delay", task, *args, user="demo").stdout
        return out.strip().splitlines()[-1]

    def tasks(self, *ids: str) -> dict[str, dict[str, Any]]:
        out = self.box.run(PYTHON, "/srv/demo/client.py", "show", *ids, user="demo").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return {row["id"]: row for row in rows}

    def wait_tasks(self, ids: list[str], status: str, timeout: float = 60) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}

        def reached() -> bool:
            rows.update(self.tasks(*ids))
            return all(rows[i]["status"] == status for i in ids)
        wait_until(reached, timeout, f"tasks {ids} to be {status}", interval=0.2)
        return rows

    def children(self) -> set[int]:
        """pids of castord's children (by their process titles), which a reload replaces."""
        out = self.box.run("ps", "-e", "-o", "pid=,args=").stdout
        rows = [line.split(None, 1) for line in out.splitlines()]
        return {int(row[0]) for row in rows if len(row) == 2 and row[1].startswith(CHILD_TITLES)}

    def release(self, name: str) -> None:
        self.box.run("touch", f"{STATE}/{name}")

    @contextmanager
    def dropin(self, name: str, text: str) -> Iterator[None]:
        """A drop-in for the unit while the block runs (and a restart to apply it)."""
        directory = f"/etc/systemd/system/{UNIT}.service.d"
        self.box.sh(f"mkdir -p {directory}; cat > {directory}/{name}.conf; systemctl daemon-reload", stdin=text)
        try:
            self.restart()
            yield
        finally:
            self.box.sh(f"rm -f {directory}/{name}.conf; systemctl daemon-reload")

    def done_count(self) -> int | None:
        match = re.search(r", (\d+) done$", self.show("StatusText")["StatusText"])
        return int(match.group(1)) if match else None


def _stage(directory: Path) -> Path:
    """What the container gets: castor's source, the unit as shipped, the app, its env file."""
    src = directory / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("castor", "castord"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "systemd" / "castord@.service", directory / "castord@.service")
    for name in ("demoapp.py", "client.py"):
        shutil.copy(Path(__file__).with_name("demo") / name, directory / name)
    (directory / "demo.env").write_text(ENV_FILE)
    return directory


# docs/deployment.md's steps, in the container (the unit's ExecStart= and User= as shipped).
INSTALL = f"""
cp -r {STAGE}/src /tmp/castor-src
/opt/castor/venv/bin/pip install -q --disable-pip-version-check --no-index --no-deps --no-build-isolation \
    /tmp/castor-src
ln -s /opt/castor/venv/bin/castord /usr/local/bin/castord
useradd --system --home /srv/demo demo
install -d -o demo -g demo /srv/demo {STATE}
install -m 644 {STAGE}/demoapp.py {STAGE}/client.py /srv/demo/
install -d /etc/castord
install -m 644 {STAGE}/demo.env /etc/castord/demo.env
install -m 644 {STAGE}/castord@.service /etc/systemd/system/castord@.service
systemctl daemon-reload
systemctl enable {UNIT}
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    rootfs = root_or_skip()
    work = tmp_path_factory.mktemp("systemd")
    stage = _stage(work / "stage")
    box = Container(rootfs, f"castor-test-{os.getpid()}", work, {stage: STAGE})
    try:
        box.boot()
        box.sh(INSTALL, timeout=180)
        yield Demo(box)
    finally:
        box.shutdown()


def _when(text: str) -> datetime:
    """castord's ISO timestamps and systemd's `--timestamp=us+utc` ones, as datetimes."""
    if text.endswith(" UTC"):  # "Tue 2026-12-01 13:33:00.985123 UTC"
        return datetime.strptime(text.split(" ", 1)[1], "%Y-%m-%d %H:%M:%S.%f UTC").replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.timeout(300)
def test_the_unit_runs_as_shipped(demo):
    shown = demo.systemctl("cat", UNIT)
    assert (REPO / "systemd" / "castord@.service").read_text().strip() in shown
    demo.restart()
    props = demo.show("User", "Type", "NotifyAccess", "KillMode", "MainPID")
    assert (props["User"], props["Type"], props["NotifyAccess"], props["KillMode"]) == ("demo", "notify", "main", "mixed")
    assert props["MainPID"] != "0"


@pytest.mark.timeout(180)
def test_activating_until_ready_then_active(demo):
    demo.systemctl("stop", UNIT)
    demo.box.run("touch", HOLD)
    cursor = demo.cursor()
    demo.systemctl("start", "--no-block", UNIT)
    try:
        wait_until(lambda: len(demo.events(cursor, "child.spawned")) >= 3, 60,
                   "castord to spawn its 3 children", interval=0.1)
        # The children are held in their import of APP: castord runs, but is not READY.
        statuses = set()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            props = demo.show("ActiveState", "SubState", "MainPID", "StatusText")
            assert (props["ActiveState"], props["SubState"]) == ("activating", "start"), props
            assert props["MainPID"] != "0"
            statuses.add(props["StatusText"])
            time.sleep(0.1)
        assert not demo.events(cursor, "castord.ready")
    finally:
        demo.box.run("rm", "-f", HOLD)
    wait_until(lambda: demo.state() == "active", 60, f"{UNIT} to become active")
    ready = demo.events(cursor, "castord.ready")
    assert len(ready) == 1
    entered = demo.show("ActiveEnterTimestamp")["ActiveEnterTimestamp"]
    # castord logs castord.ready, then sends READY=1: systemd's "active" comes after.
    assert _when(ready[0]["timestamp"]) <= _when(entered)
    # Issue 13, item 10: STATUS= before READY=1 said "running: 3 children..." (fails until fixed).
    assert not any(s.startswith("running") for s in statuses), f"STATUS before READY=1: {statuses}"


@pytest.mark.timeout(180)
def test_systemctl_status_shows_castords_status_line(demo):
    demo.restart()
    wait_until(lambda: demo.show("StatusText")["StatusText"].startswith("running:"), 30,
               "castord's STATUS= line")
    out = demo.systemctl("status", UNIT, check=False)
    assert re.search(r'Status: "running: 3 children, \d+ tasks running, \d+ done"', out), out


@pytest.mark.timeout(240)
def test_reload_starts_new_children_and_keeps_running_tasks_and_totals(demo):
    demo.restart()
    cursor = demo.cursor()
    quick = [demo.delay("quick", str(n)) for n in range(3)]
    demo.wait_tasks(quick, "success")
    held = demo.delay("held", f"{STATE}/release-reload")
    demo.wait_tasks([held], "running")
    wait_until(lambda: demo.done_count() == 3, 60, "STATUS to count the 3 finished tasks", interval=0.2)
    old = demo.children()
    assert len(old) == 3, old

    demo.systemctl("reload", UNIT)
    wait_until(lambda: len(demo.children() - old) == 3, 60, "a new generation of 3 children", interval=0.1)
    assert demo.state() == "active"
    demo.release("release-reload")
    rows = demo.wait_tasks([held], "success")
    assert rows[held]["result"] == "released" and rows[held]["attempts"] == 1  # not rerun
    wait_until(lambda: demo.events(cursor, "castord.reloaded"), 60, "castord.reloaded")
    assert not demo.children() & old  # the old generation is gone, the new one stays
    assert len(demo.children()) == 3

    after = demo.delay("quick", "99")
    demo.wait_tasks([after], "success")
    # Issue 13, item 10: the count fell to what the new children had done, as only live
    # children were summed (fails until castord keeps totals in the master).
    deadline = time.monotonic() + 60  # STATUS= is refreshed every 5 s
    while (done := demo.done_count()) != 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert done == 5, f"STATUS says {done} done after the reload, of 5 done in all"
    assert "Reloaded castord@demo.service" in " ".join(demo.messages(cursor))


@pytest.mark.timeout(240)
def test_stop_drains_a_running_task_and_exits_0_without_sigkill(demo):
    demo.restart()
    held = demo.delay("held", f"{STATE}/release-stop")
    demo.wait_tasks([held], "running")
    cursor = demo.cursor()
    demo.systemctl("stop", "--no-block", UNIT)
    wait_until(lambda: demo.state() == "deactivating", 60, f"{UNIT} to start stopping")
    wait_until(lambda: demo.events(cursor, "castord.draining"), 60, "castord to drain")
    assert demo.tasks(held)[held]["status"] == "running"  # the drain waits for it
    assert demo.state() == "deactivating"
    demo.release("release-stop")
    wait_until(lambda: demo.state() in ("inactive", "failed"), 120, f"{UNIT} to stop")
    # (The unit is enabled, so systemd keeps it loaded, and how its process ended.)
    props = demo.show("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    # ExecMainCode 1 is CLD_EXITED: castord exited by itself, with 0; no signal killed it.
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainCode": "1", "ExecMainStatus": "0"}
    rows = demo.tasks(held)
    assert rows[held]["status"] == "success" and rows[held]["attempts"] == 1
    assert [e["exit_code"] for e in demo.events(cursor, "castord.stopped")] == [0]
    lines = demo.messages(cursor)
    # Issue 13, item 11: systemd SIGKILLed what castord left behind (its fork server).
    killed = [line for line in lines if "Killing process" in line or "SIGKILL" in line]
    assert not killed, "\n".join(killed)
    assert any("Deactivated successfully" in line for line in lines), lines[-5:]


@pytest.mark.timeout(240)
def test_repeated_stops_leave_nothing_for_systemd_to_kill(demo):
    """What castord leaves behind at exit is killed by systemd only if it is still there
    when systemd looks, a race: repeat the stop to give a leftover more chances to show."""
    demo.restart()
    cursor = demo.cursor()
    for _ in range(10):
        demo.systemctl("reset-failed", UNIT)  # else StartLimitBurst= (5 in 10 s) refuses the 6th start
        demo.systemctl("restart", UNIT)  # a clean stop (drain, exit 0), then a start
    demo.systemctl("stop", UNIT)
    lines = demo.messages(cursor)
    assert sum("Deactivated successfully" in line for line in lines) == 11, lines
    killed = [line for line in lines if "Killing process" in line or "SIGKILL" in line]
    assert not killed, "\n".join(killed)


@pytest.mark.timeout(240)
def test_watchdog_restarts_a_master_that_stops_answering(demo):
    # 30 s in the unit; shorter here so that the test waits seconds, not a minute.
    with demo.dropin("watchdog", "[Service]\nWatchdogSec=5\n"):
        before = demo.show("MainPID", "NRestarts", "WatchdogUSec")
        assert before["WatchdogUSec"] == "5s"
        # castord pings (WATCHDOG=1) every 2.5 s: a live master is left alone.
        cursor = demo.cursor()
        time.sleep(6)
        assert demo.show("MainPID", "NRestarts") == {"MainPID": before["MainPID"], "NRestarts": before["NRestarts"]}
        demo.box.run("kill", "-STOP", before["MainPID"])
        wait_until(lambda: demo.show("NRestarts")["NRestarts"] == str(int(before["NRestarts"]) + 1), 90,
                   "systemd to restart castord after the watchdog fired", interval=0.2)
        wait_until(lambda: demo.state() == "active", 60, f"{UNIT} to be active again")
        assert demo.show("MainPID")["MainPID"] not in ("0", before["MainPID"])
        lines = demo.messages(cursor)
        assert any("Watchdog timeout" in line for line in lines), lines
        assert any("Failed with result 'watchdog'" in line for line in lines), lines


def _failed_task(demo: Demo) -> tuple[str, str]:
    demo.restart()
    cursor = demo.cursor()
    task_id = demo.delay("boom", "kaboom from the systemd test")
    demo.wait_tasks([task_id], "failed")
    wait_until(lambda: any(e.get("task_id") == task_id for e in demo.events(cursor, "task.failed")), 30,
               "castord's task.failed line in the journal")
    return cursor, task_id


@pytest.mark.timeout(180)
def test_a_failed_task_is_in_journalctl_priority_err(demo):
    cursor, task_id = _failed_task(demo)
    entries = [e for e in demo.journal(cursor) if task_id in str(e.get("MESSAGE", ""))
               and '"task.failed"' in str(e.get("MESSAGE", ""))]
    assert entries, "no task.failed entry"
    # journald stores a stream line at the priority it was given (err = 3); castord's
    # lines all came in at info (6) (fails until castord marks them, issue 13).
    assert [e.get("PRIORITY") for e in entries] == ["3"], [(e.get("PRIORITY"), e.get("MESSAGE")) for e in entries]
    err = demo.box.run("journalctl", "-u", UNIT, "-p", "err", "-o", "cat", f"--after-cursor={cursor}").stdout
    assert task_id in err, err


@pytest.mark.timeout(180)
def test_the_docs_log_pipelines_work_on_the_units_journal(demo):
    """docs/deployment.md's `journalctl ... | jq` lines, run as written (for `myapp`, `demo`)."""
    page = REPO / "docs" / "deployment.md"
    blocks = [b for b in parse_page(page) if "journalctl -u castord@myapp" in b.code]
    assert blocks, "docs/deployment.md has no journalctl pipeline"
    commands = [line for b in blocks for line in b.code.splitlines() if line.startswith("journalctl")]
    _, task_id = _failed_task(demo)
    problems, finders = [], []
    for command in commands:
        result = demo.box.run("bash", "-o", "pipefail", "-c", command.replace("castord@myapp", UNIT), check=False)
        if result.returncode != 0:
            problems.append(f"{command}: exit {result.returncode}: {result.stderr.strip()}")
        elif "task.failed" in command or "-p err" in command:  # these must find the failed task
            finders.append(command)
            if task_id not in result.stdout:
                problems.append(f"{command}: no line of task {task_id} in {result.stdout[-1000:]!r}")
    assert finders, commands
    assert not problems, "\n".join(problems)
