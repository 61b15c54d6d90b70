"""`castord start --metrics-port`: scrape the Prometheus endpoint of a real castord."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, wait_until
from tests.process.test_castord import Castord, daemons, marker_pids  # noqa: F401 - fixture
from tests.tools import require_tool

pytestmark = pytest.mark.timeout(90)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
RULES = REPO / "deploy" / "prometheus" / "castor-rules.yml"


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(port: int) -> Samples:
    return parse(scrape_text(port))


def start_with_metrics(d: Castord, *extra: str) -> int:
    """Start castord with a metrics endpoint on a free port; its port once READY."""
    d.start("--metrics-port", "0", *extra)
    d.wait_note("READY=1")
    return d.wait_event("metrics.serving")[0]["port"]


def test_metrics_endpoint_reports_tasks_queues_children_and_restarts(daemons, app_dir):  # noqa: F811
    import testapp

    d = daemons().start("--metrics-port", "0")
    d.wait_note("READY=1")
    serving = d.wait_event("metrics.serving")[0]
    assert serving["host"] == "127.0.0.1"  # not exposed beyond the host unless asked
    port = serving["port"]
    for i in range(3):
        assert testapp.add.delay(i, 1).join(timeout=20) == i + 1
    with pytest.raises(ValueError):
        testapp.boom.delay("x").join(timeout=20)
    testapp.add.apply_async((0, 0), countdown=3600, queue="later")

    def finished() -> dict:
        # Each child sends its own tally with its heartbeat: wait for both tasks' children.
        m = scrape(port)
        done = m.get(("castor_tasks_finished_total", (("name", "add"), ("status", "success"))))
        failed = m.get(("castor_tasks_finished_total", (("name", "boom"), ("status", "failed"))))
        return m if (done, failed) == (3, 1) else {}

    m = wait_until(finished, 20, "the children's tallies to reach the master")
    assert m[("castor_tasks", (("status", "success"),))] == 3
    assert m[("castor_tasks", (("status", "failed"),))] == 1
    assert m[("castor_tasks_finished_total", (("name", "boom"), ("status", "failed")))] == 1
    assert m[("castor_task_duration_seconds_count", (("name", "add"),))] == 3
    assert m[("castor_task_duration_seconds_bucket", (("le", "+Inf"), ("name", "add")))] == 3
    assert m[("castor_queue_depth", (("queue", "later"),))] == 1
    assert m[("castor_scheduled_tasks", ())] == 1
    assert m[("castor_oldest_pending_age_seconds", ())] == 0
    assert m[("castor_children", (("role", "process-worker"),))] == 2
    assert m[("castor_children", (("role", "thread-host"),))] == 1
    assert m[("castor_database_up", ())] == 1 and m[("castor_daemon_up", ())] == 1
    assert ("castor_child_heartbeat_age_seconds", (("index", "0"), ("role", "thread-host"))) in m

    marker = app_dir / "crash.marker"
    task = testapp.crash_once.delay(str(marker))
    wait_until(lambda: marker_pids(marker), 20, "the task to start")
    os.kill(marker_pids(marker)[0], signal.SIGKILL)
    assert task.join(timeout=30) == "second attempt"
    # The master requeues the task, then counts the restart: the other child may finish it in between.
    crash = ("castor_child_restarts_total", (("reason", "crash"), ("role", "process-worker")))
    wait_until(lambda: scrape(port)[crash] == 1, 20, "the crash to be counted")
    assert scrape(port)[("castor_child_restarts_total", (("reason", "recycled"), ("role", "process-worker")))] == 0


def test_a_metrics_port_in_use_is_a_clear_error(daemons):  # noqa: F811
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        d = daemons().start("--metrics-port", str(taken.getsockname()[1]))
        assert d.wait_exit(30) == 2
        assert d.proc is not None and b"cannot serve metrics" in d.proc.stderr.read()
    finally:
        taken.close()


def test_a_fresh_castord_exports_every_known_label_set_at_zero(daemons, app_dir):  # noqa: F811
    """Issue 13 item 9: a counter that appears at its first increment hides that
    increment from increase(); every label set castord can know is there from the start."""
    import testapp

    port = start_with_metrics(daemons(), "--queues", "default,reports")
    m = scrape(port)
    names = sorted(testapp.manager.registry)
    assert "boom" in names and "add" in names
    for name in names:
        for status in ("success", "failed", "cancelled", "retry"):
            assert m[("castor_tasks_finished_total", (("name", name), ("status", status)))] == 0, (name, status)
        assert m[("castor_task_duration_seconds_count", (("name", name),))] == 0
        assert m[("castor_task_duration_seconds_bucket", (("le", "+Inf"), ("name", name)))] == 0
    for role in ("process-worker", "thread-host"):
        for reason in ("crash", "recycled"):
            assert m[("castor_child_restarts_total", (("reason", reason), ("role", role)))] == 0, (role, reason)
    assert m[("castor_queue_depth", (("queue", "default"),))] == 0
    assert m[("castor_queue_depth", (("queue", "reports"),))] == 0  # from --queues
    assert m[("castor_daemon_state", (("state", "running"),))] == 1
    for state in ("reloading", "draining", "stopping"):
        assert m[("castor_daemon_state", (("state", state),))] == 0
    assert m[("castor_daemon_up", ())] == 1


def test_a_fresh_castord_exports_every_series_the_alert_rules_read(daemons):  # noqa: F811
    """Each castor_* name in deploy/prometheus/castor-rules.yml is exported from the first scrape."""
    port = start_with_metrics(daemons())
    exported = {name for name, _ in scrape(port)}
    read = set(re.findall(r"\bcastor_[a-z_]+", RULES.read_text()))
    assert read and read <= exported, read - exported


def test_promtool_accepts_the_exposition(daemons, app_dir):  # noqa: F811
    """`promtool check metrics` (names, types, HELP, units) on a real scrape with every kind of sample."""
    import testapp

    promtool = require_tool("promtool", "Debian package prometheus (listed in .ci/apt-packages)")
    port = start_with_metrics(daemons())
    assert testapp.add.delay(1, 2).join(timeout=20) == 3
    with pytest.raises(ValueError):
        testapp.boom.delay("x").join(timeout=20)
    wait_until(lambda: scrape(port).get(("castor_tasks_finished_total", (("name", "boom"), ("status", "failed"))))
               == 1, 20, "the children's tallies to reach the master")
    text = scrape_text(port)
    assert "castor_task_duration_seconds_bucket" in text and "castor_child_rss_bytes" in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_a_draining_castord_is_up_and_says_so_and_a_stopped_one_exports_nothing(daemons, app_dir):  # noqa: F811
    """What the alert rules rely on: during a drain castord answers, castor_daemon_up 1 and
    castor_daemon_state{state="draining"} 1; once it has exited, its port answers nothing
    (so Prometheus's up for it goes to 0: CastordDown)."""
    import testapp

    d = daemons()
    port = start_with_metrics(d, "--workers", "1")
    marker = app_dir / "long.marker"
    task = testapp.critical.delay(60, str(marker))  # non-daemon: the drain waits for it
    wait_until(lambda: marker_pids(marker), 20, "the task to start")
    d.signal(signal.SIGTERM)
    d.wait_event("castord.draining")

    def draining() -> Samples | None:
        m = scrape(port)
        busy = m[("castor_tasks_running_here", (("role", "process-worker"),))] == 1  # with the next heartbeat
        return m if busy and m[("castor_daemon_state", (("state", "draining"),))] == 1 else None

    m = wait_until(draining, 20, "the scrape to show the drain of a busy castord")
    assert m[("castor_daemon_up", ())] == 1 and m[("castor_database_up", ())] == 1
    assert m[("castor_daemon_state", (("state", "running"),))] == 0
    assert task.status() == "running"

    d.signal(signal.SIGTERM)  # a second TERM stops fast; the task goes back to pending
    assert d.wait_exit(30) == 0
    with pytest.raises(urllib.error.URLError):
        scrape_text(port)
