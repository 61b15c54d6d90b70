"""deploy/prometheus/castor-rules.yml loaded by a real Prometheus scraping a real castord.

What the promtool tests model, seen for real: the first failure of a task and the
first crash of a child are counted (castord exports their counters at 0 from the
start); a drain raises only the soft alert; a castord that has exited makes
CastordDown fire and leaves no castor_* series. The rules' `for:` durations are
shortened to 0s in the copy Prometheus loads, so that each alert fires at the first
evaluation that sees its condition.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, wait_until
from tests.process.test_castord import daemons, marker_pids  # noqa: F401 - fixture
from tests.process.test_metrics import start_with_metrics
from tests.tools import require_tool

pytestmark = pytest.mark.timeout(150)

RULES = REPO / "deploy" / "prometheus" / "castor-rules.yml"


class Prometheus:
    """One Prometheus started by a test (scraping and evaluating every second), stopped by its pid."""

    def __init__(self, tmp_path: Path, target_port: int):
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir()
        rules = re.sub(r"for: \d+m", "for: 0s", RULES.read_text())
        (self.dir / RULES.name).write_text(rules)
        (self.dir / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: [{RULES.name}]\n"
            "scrape_configs:\n"
            "  - job_name: castord\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n")
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, binary: str) -> Prometheus:
        self.log = (self.dir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._ready, 30, "Prometheus to be ready")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:  # its port taken meanwhile, a bad flag...: say why, now
            self.log.flush()
            pytest.fail(f"prometheus exited {self.proc.returncode}: {(self.dir / 'prometheus.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def alerts(self, state: str | None = None) -> list[dict[str, str]]:
        return [{**a["labels"], "state": a["state"]} for a in self.api("alerts")["alerts"]
                if state is None or a["state"] == state]

    def now(self) -> float:
        """Prometheus's own clock (unix seconds)."""
        return float(self.api("query", query="time()")["result"][1])

    def evaluated_since(self, t: float) -> bool:
        """Every rule group has been evaluated after `t` (Prometheus's clock): its alerts
        then say what the samples scraped before `t` mean."""
        groups = self.api("rules")["groups"]
        return bool(groups) and all(_unix(g["lastEvaluation"]) > t for g in groups)

    def firing(self, alert: str, **labels: str) -> bool:
        return any(a["alertname"] == alert and all(a.get(k) == v for k, v in labels.items())
                   for a in self.alerts("firing"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None:
            self.log.close()


def _unix(rfc3339: str) -> float:
    """Prometheus's RFC 3339 time (nanoseconds, "Z") as unix seconds."""
    head, _, fraction = rfc3339.rstrip("Z").partition(".")
    return datetime.fromisoformat(head).replace(tzinfo=timezone.utc).timestamp() + float(f"0.{fraction or 0}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prometheus_binary() -> str:
    return require_tool("prometheus", "Debian package prometheus (listed in .ci/apt-packages)")


@pytest.fixture
def prometheus(tmp_path: Path, prometheus_binary: str) -> Iterator[Any]:
    started: list[Prometheus] = []

    def make(target_port: int) -> Prometheus:
        p = Prometheus(tmp_path, target_port)
        started.append(p)
        return p.start(prometheus_binary)

    yield make
    for p in started:
        p.stop()


def test_a_real_prometheus_sees_first_failures_drains_and_a_dead_castord(daemons, app_dir, prometheus):  # noqa: F811
    import testapp

    d = daemons()
    port = start_with_metrics(d, "--workers", "1", "--threads", "1")
    prom = prometheus(port)
    # Two scrapes of the zeros first: the failure below is then a rise from 0.
    wait_until(lambda: prom.query('count_over_time(castor_tasks_finished_total{name="boom",status="failed"}[1m]) >= 2'),
               30, "Prometheus to scrape the zero counters twice")
    # Before its first scrape Prometheus rightly saw no target (CastordNoTarget, `for:`
    # made 0 s here): look once the rules have been evaluated on what it scraped.
    scraped = prom.now()
    wait_until(lambda: prom.evaluated_since(scraped), 30, "Prometheus to evaluate its rules after the scrapes")
    assert prom.alerts() == []  # a healthy castord raises nothing

    with pytest.raises(ValueError):
        testapp.boom.delay("first failure").join(timeout=20)
    wait_until(lambda: prom.firing("CastorTasksFailing", name="boom"), 30, "the first failure to fire CastorTasksFailing")

    marker = app_dir / "crash.marker"
    crashed = testapp.crash_once.delay(str(marker))
    wait_until(lambda: marker_pids(marker), 20, "the task to start")
    os.kill(marker_pids(marker)[0], signal.SIGKILL)
    assert crashed.join(timeout=30) == "second attempt"
    wait_until(lambda: prom.query('increase(castor_child_restarts_total{reason="crash",role="process-worker"}[1m]) > 0'),
               30, "the first crash to show in increase()")

    long = app_dir / "long.marker"
    testapp.critical.delay(60, str(long))  # non-daemon: a drain waits for it
    wait_until(lambda: marker_pids(long), 20, "the long task to start")
    d.signal(signal.SIGTERM)
    wait_until(lambda: prom.firing("CastordDrainingLong"), 30, "the drain to raise CastordDrainingLong")
    assert not [a for a in prom.alerts() if a["alertname"] in ("CastordDown", "CastorDatabaseUnreachable")]

    d.signal(signal.SIGTERM)  # a second TERM stops fast: castord exits
    assert d.wait_exit(30) == 0
    wait_until(lambda: prom.firing("CastordDown", instance=f"127.0.0.1:{port}"), 30, "CastordDown to fire")
    down = prom.now()  # every rule group evaluated on the failed scrape, not only CastordDown's
    wait_until(lambda: prom.evaluated_since(down), 30, "Prometheus to evaluate its rules after the failed scrape")
    assert prom.query("castor_daemon_up") == []  # a dead castord leaves no castor_* series
    assert prom.query('up{job="castord"}')[0]["value"][1] == "0"
    assert not prom.firing("CastordDrainingLong")  # its series went with it
