"""`castord start --metrics-port`: scrape the Prometheus endpoint of a real castord."""

from __future__ import annotations

import os
import signal
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from tests.process.test_castord import daemons, marker_pids  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(90)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


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
        m = scrape(port)
        done = m.get(("castor_tasks_finished_total", (("name", "add"), ("status", "success"))))
        return m if done == 3 else {}

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
    m = scrape(port)
    assert m[("castor_child_restarts_total", (("reason", "crash"), ("role", "process-worker")))] == 1


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
