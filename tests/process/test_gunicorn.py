"""examples/fastapi_app under a real `gunicorn --preload -w 2 -k uvicorn.workers.UvicornWorker`.

--preload imports the app in gunicorn's master, then forks the workers: whatever the
import opened is inherited. An inherited BeaverDB hangs (its threads stayed in the
master), so a lifespan that closed one made every worker hang at shutdown until
gunicorn killed it (issue 13 item 14). The example now gives the Manager a path and
opens the BeaverDB lazily, per process (docs/web.md, "Pre-fork servers").
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import castor
from tests.conftest import REPO, wait_until

pytestmark = pytest.mark.timeout(120)

GUNICORN = str(Path(sys.executable).parent / "gunicorn")
GRACEFUL_TIMEOUT = 20  # what gunicorn gives a worker after TERM before it kills it


class Gunicorn:
    """One gunicorn master started by a test, stopped by its pid."""

    def __init__(self, tmp_path: Path):
        self.log = tmp_path / "gunicorn.log"
        self.db = tmp_path / "fastapi_app.db"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Gunicorn:
        args = [GUNICORN, "--preload", "-w", "2", "-k", "uvicorn.workers.UvicornWorker",
                "--bind", "127.0.0.1:0",  # a free loopback port; the log says which
                "--graceful-timeout", str(GRACEFUL_TIMEOUT),
                "--no-control-socket",  # gunicorn >= 25.1 would share ~/.gunicorn/gunicorn.ctl
                "--error-logfile", str(self.log), "--access-logfile", str(self.log),
                "examples.fastapi_app.main:app"]
        env = {**os.environ, "CASTOR_FASTAPI_DB": str(self.db), "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def port(self) -> int:
        def listening() -> int | None:
            for line in self.lines():
                if match := re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line):
                    return int(match[1])
            return None
        return wait_until(listening, 30, "gunicorn to listen")  # type: ignore[return-value]

    def workers(self) -> list[int]:
        return [int(m[1]) for line in self.lines() if (m := re.search(r"Booting worker with pid: (\d+)", line))]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the master and its workers
            self.proc.wait(timeout=10)
        for pid in self.workers():  # a worker left behind, if it is still ours (same process group)
            if _process_group(pid) == self.proc.pid:
                os.kill(pid, signal.SIGKILL)


def _process_group(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[2])  # after "pid (comm) state ppid": pgrp


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Gunicorn]:
    g = Gunicorn(tmp_path)
    yield g
    g.stop()


def call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"content-type": "application/json", "connection": "close"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return response.status, json.loads(response.read())


def test_preloaded_app_serves_tasks_and_both_workers_shut_down_cleanly(gunicorn):
    port = gunicorn.start().port()
    wait_until(lambda: len([ln for ln in gunicorn.lines() if "Application startup complete" in ln]) == 2,
               30, "both workers to finish their lifespan startup")
    workers = gunicorn.workers()
    assert len(workers) == 2

    status, calculation = call(port, "POST", "/calculate", {"a": 10, "b": 20})
    assert status == 202 and calculation["status"] == "pending"
    status, submitted = call(port, "POST", "/tasks", {"name": "examples.fastapi_app.tasks.build_report",
                                                      "args": [3], "priority": 5})
    assert status == 202
    assert call(port, "GET", f"/calculations/{calculation['task_id']}")[1]["status"] == "pending"
    assert call(port, "GET", submitted["url"])[1]["priority"] == 5
    status, health = call(port, "GET", "/tasks/health")
    assert status == 200 and health["counts"]["pending"] == 2

    assert gunicorn.proc is not None
    os.kill(gunicorn.proc.pid, signal.SIGTERM)  # gunicorn's graceful stop
    # Well inside the deadline a hung worker would meet: GRACEFUL_TIMEOUT, then SIGKILL.
    assert gunicorn.proc.wait(timeout=3 * GRACEFUL_TIMEOUT) == 0
    log = gunicorn.lines()
    for pid in workers:  # each worker ran its lifespan shutdown to the end, itself
        assert any(f"[{pid}] [INFO] Application shutdown complete." in ln for ln in log), log
        assert any(f"[{pid}] [INFO] Finished server process [{pid}]" in ln for ln in log), log
    assert not [ln for ln in log if "SIGKILL" in ln or "WORKER TIMEOUT" in ln or "[ERROR]" in ln], log
    assert "Shutting down: Master" in log[-1]

    manager = castor.Manager(str(gunicorn.db))  # what the workers stored is there, durable
    try:
        assert manager.get(calculation["task_id"]).status() == "pending"
        assert manager.store.get(submitted["id"]).priority == 5
    finally:
        manager.close()
