"""At-least-once delivery across real processes: volume, crashes, and beaver-db beside us."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import wait_until

PRODUCER = '''
import json, sys
import testapp
producer, count = sys.argv[1], int(sys.argv[2])
ids = [testapp.record.delay(producer, i).id for i in range(count)]
json.dump(ids, open(f"ids-{producer}.json", "w"))
'''

RECORDER = '''

@manager.task(mode="process", name="record")
def record(producer, i):
    with open(os.path.join(os.path.dirname(os.environ["CASTOR_TEST_DB"]), "ran.log"), "a") as f:
        f.write(f"{producer}:{i}\\n")
    return [producer, i * 2]
'''


@pytest.fixture
def volume_app(app_dir):
    with open(app_dir / "testapp.py", "a") as f:
        f.write(textwrap.dedent(RECORDER))
    (app_dir / "producer.py").write_text(textwrap.dedent(PRODUCER))
    return app_dir


def rows(db_path, sql, params=()):
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def wait_for_exit(proc, timeout):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out.decode()[-3000:]


@pytest.mark.timeout(180)
def test_two_producers_two_workers_every_task_exactly_once(volume_app, processes, db_path):
    per_producer = 5000
    workers = [processes.worker("testapp:manager", "--mode", "process") for _ in range(2)]
    producers = [processes.start("producer.py", p, str(per_producer)) for p in ("p1", "p2")]
    for proc in producers:
        wait_for_exit(proc, 120)
    total = 2 * per_producer
    wait_until(lambda: rows(db_path, "SELECT count(*) FROM castor_tasks WHERE status='success'")[0][0] == total,
               120, "all tasks to succeed")
    ids = json.loads((volume_app / "ids-p1.json").read_text()) + json.loads((volume_app / "ids-p2.json").read_text())
    assert len(set(ids)) == total
    stored = rows(db_path, "SELECT id, status, attempts, result, args FROM castor_tasks")
    assert len(stored) == total and {r[0] for r in stored} == set(ids)
    for _id, status, attempts, result, args in stored:
        producer, i = json.loads(args)
        assert (status, attempts, json.loads(result)) == ("success", 1, [producer, i * 2])
    ran = (volume_app / "ran.log").read_text().split()
    assert len(ran) == total and len(set(ran)) == total  # each ran exactly once
    assert all(w.poll() is None for w in workers)  # both workers still alive
    owners = {r[0].rsplit(":", 1)[0] for r in rows(db_path, "SELECT owner FROM castor_tasks")}
    assert len(owners) == 2  # both workers took a share


@pytest.mark.timeout(90)
def test_sigkilled_worker_task_is_claimed_again_after_its_lease(volume_app, processes, db_path):
    import testapp

    marker = str(volume_app / "crash-marker")
    victim = processes.worker("testapp:manager", "--mode", "process", "--lease", "1")
    task = testapp.crash_once.delay(marker)
    wait_until(lambda: os.path.exists(marker) and Path(marker).read_text(), 30, "the task to start")
    first = task.info()
    assert first.status == "running" and first.attempts == 1
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    killed_at = time.monotonic()
    processes.worker("testapp:manager", "--mode", "process", "--lease", "1")
    assert task.join(timeout=30) == "second attempt"
    assert time.monotonic() - killed_at < 15
    final = task.info()
    assert final.attempts == 2 and final.lost == 1 and final.owner != first.owner
    # The dead worker's late settle is rejected: the newer attempt's result stands.
    assert not testapp.manager.store.settle(
        task.id, first.owner, first.attempts, "failed", error={"type": "late"}, now=time.time(),
        fence=first.fence)
    assert task.join(timeout=1) == "second attempt"


WRITER = '''
import os, sys, time, traceback
from beaver import BeaverDB
db = BeaverDB(os.environ["CASTOR_TEST_DB"])
d = db.dict("app_state")
errors, writes = 0, 0
deadline = time.monotonic() + float(sys.argv[1])
stop_file = sys.argv[2]
started_file = sys.argv[3] if len(sys.argv) > 3 else None
while time.monotonic() < deadline and not os.path.exists(stop_file):
    try:
        d[f"k{writes % 500}"] = {"n": writes, "at": time.time()}
        assert d[f"k{writes % 500}"]["n"] == writes
        writes += 1
        if writes == 1 and started_file:
            open(started_file, "w").close()
    except Exception:
        errors += 1
        traceback.print_exc()
print(f"WRITES={writes} ERRORS={errors}", flush=True)
db.close()
'''


@pytest.mark.timeout(240)
def test_beaver_app_and_castor_share_the_file_without_errors(volume_app, processes, db_path):
    (volume_app / "writer.py").write_text(textwrap.dedent(WRITER))
    stop_file = str(volume_app / "stop-writer")
    started_file = volume_app / "writer-started"
    writers = [processes.start("writer.py", "150", stop_file, str(started_file))]
    # Writing before castor starts, so that it writes all through the drain (which may
    # be over before a late writer's first write on a fast machine).
    wait_until(started_file.exists, 60, "the beaver writer's first write")
    workers = [processes.worker("testapp:manager", "--mode", "process") for _ in range(2)]
    producer = processes.start("producer.py", "p1", "5000")
    wait_for_exit(producer, 150)
    wait_until(lambda: rows(db_path, "SELECT count(*) FROM castor_tasks WHERE status='success'")[0][0] == 5000,
               150, "5,000 tasks to succeed beside the beaver writers")
    open(stop_file, "w").close()
    for writer in writers:
        out, _ = writer.communicate(timeout=60)
        text = out.decode()
        assert writer.returncode == 0, text[-3000:]
        assert "ERRORS=0" in text, text[-3000:]
        # It really wrote meanwhile. (How fast beaver writes while castor drains
        # flat out is a fairness figure, in docs/benchmarks.md, not a test.)
        assert int(text.split("WRITES=")[1].split()[0]) > 0
    for worker in workers:
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=30)
        assert "locked" not in out.decode().lower() and "Traceback" not in out.decode(), out.decode()[-3000:]
    assert rows(db_path, "SELECT count(*) FROM castor_tasks WHERE status != 'success'")[0][0] == 0
