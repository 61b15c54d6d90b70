"""`castord status` lists every castord on the store, on a file and on PostgreSQL.

The rows are written by the store's own record_daemon, as castord masters on other
hosts write them; tests/process/test_fleet.py runs real castords as two hosts.
"""

from __future__ import annotations

import json
import time

import pytest

from castor.store import open_store
from castord import control

FLEET_KEYS = {"host", "pid", "app", "state", "started_at", "uptime_s", "heartbeat_age_s", "stale", "workers",
              "threads", "busy", "queues"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, db_path: str) -> str:
    if request.param == "sqlite":
        open_store(db_path).close()
        return db_path
    return str(request.getfixturevalue("postgres_db_url"))


def info(state: str = "running", *, workers: int = 2, threads: int = 4, process_running: int = 0,
         thread_running: int = 0, queues: list[str] | None = None) -> dict:
    """What a master writes in its heartbeat row (Supervisor.snapshot): its children and what they run."""
    task = {"id": "0190aaaa", "name": "t", "queue": "default"}
    children = [{"pid": 900 + i, "role": "process-worker", "index": i, "state": "ready",
                 "running": [task] if i < process_running else [], "done": 0, "rss_kb": 1024,
                 "heartbeat_age_s": 0.1} for i in range(workers)]
    if threads:
        children.append({"pid": 990, "role": "thread-host", "index": 0, "state": "ready",
                         "running": [task] * thread_running, "done": 0, "rss_kb": 1024, "heartbeat_age_s": 0.1})
    return {"state": state, "workers": workers, "threads": threads, "queues": queues, "children": children,
            "schedules": {}}


def record(url: str, host: str, pid: int, row_info: dict, *, started_ago: float = 60.0, silent_for: float = 0.0,
           app: str = "app:manager") -> None:
    """A heartbeat row as castord `pid` on `host` writes it, `silent_for` seconds ago."""
    store = open_store(url)
    try:
        clock = store.clock
        store.clock = lambda: clock() - silent_for  # its beat on the store's clock, that long ago
        now = time.time()
        store.record_daemon(f"{host}:{pid}", host=host, pid=pid, app=app, started_at=now - started_ago,
                            info=row_info, now=now - silent_for)
    finally:
        store.close()


def report_for(url: str) -> dict:
    return control.status_report(control.Target(None, url, "app:manager"))


def test_every_castord_on_the_store_by_host_then_pid(store_url):
    record(store_url, "web-2", 20, info(process_running=1, thread_running=2, queues=["mail"]))
    record(store_url, "web-1", 30, info("draining", workers=1, threads=0))
    record(store_url, "web-1", 10, info(workers=0, threads=8, thread_running=8), app="other:manager")
    fleet = report_for(store_url)["fleet"]
    assert [(d["host"], d["pid"]) for d in fleet] == [("web-1", 10), ("web-1", 30), ("web-2", 20)]
    assert all(set(d) == FLEET_KEYS for d in fleet)
    web2 = fleet[2]
    assert {k: web2[k] for k in ("app", "state", "workers", "threads", "busy", "queues", "stale")} == {
        "app": "app:manager", "state": "running", "workers": 2, "threads": 4, "busy": 3, "queues": ["mail"],
        "stale": False}
    assert web2["uptime_s"] == pytest.approx(60, abs=5) and web2["heartbeat_age_s"] < 5
    assert (fleet[0]["app"], fleet[0]["busy"], fleet[1]["state"], fleet[1]["busy"]) == (
        "other:manager", 8, "draining", 0)
    json.dumps(fleet)  # --json prints it as it is


def test_a_silent_castord_is_stale_and_its_uptime_stops_at_its_last_heartbeat(store_url):
    record(store_url, "web-1", 10, info())
    record(store_url, "web-2", 20, info(), started_ago=600, silent_for=300)
    fresh, silent = report_for(store_url)["fleet"]
    assert (fresh["stale"], silent["stale"]) == (False, True)
    assert silent["heartbeat_age_s"] == pytest.approx(300, abs=5)
    assert silent["uptime_s"] == pytest.approx(300, abs=5)  # ran 300 s, silent since


def test_the_text_lists_the_fleet_and_says_this_host_runs_none(store_url):
    record(store_url, "web-1", 10, info(process_running=2, thread_running=1))
    record(store_url, "web-2", 20, info("draining"))
    record(store_url, "web-3", 30, info(), silent_for=120)
    report = report_for(store_url)
    assert report["running"] is False  # none on this host: LSB "not running" (exit 3)
    text = control.render(report)
    lines = text.splitlines()
    assert lines[0] == "castord is not running on this host (2 castords of the fleet run elsewhere)"
    block = lines[lines.index("fleet: 3 castords on this store"):]
    assert block[1].startswith("  web-1 pid 10 app:manager: running, busy 3/6 (2 proc, 4 thr), heartbeat ")
    assert block[2].startswith("  web-2 pid 20 app:manager: draining, busy 0/6") and "STALE" not in block[2]
    assert block[3].endswith("STALE (no heartbeat for over 15 s)")


def test_without_castords_the_fleet_is_empty_and_the_text_says_not_running(store_url):
    report = report_for(store_url)
    assert report["fleet"] == []
    assert control.render(report).splitlines()[0] == "castord is not running"
