"""Run the demo end to end: enqueue tasks, start castord, print every result, stop castord.

castord runs as a child of this script (2 process children, a thread host with
4 threads), logs JSON to a file in the demo's temp directory, and is stopped by
pid with SIGTERM: a graceful drain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

APP = "examples.demo.app:manager"


def main() -> int:
    workdir = tempfile.mkdtemp(prefix="castor-demo-")
    os.environ["CASTOR_DEMO_DB"] = os.path.join(workdir, "demo.db")
    from examples.demo.app import db, divide, fingerprint, manager, process_payment

    print(f"database: {manager.path}")
    fingerprints = fingerprint.map([(f"document-{i}", 20_000) for i in range(4)])
    payments = [process_payment.delay(f"order-{i}", 10.0 * i) for i in range(1, 6)]
    bad = divide.delay(1, 0)
    print(f"enqueued {manager.count('pending')} tasks; starting castord")

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    log_file = os.path.join(workdir, "castord.log")
    castord = os.path.join(os.path.dirname(sys.executable), "castord")
    daemon = subprocess.Popen(
        [castord, "start", APP, "--workers", "2", "--threads", "4", "--log-file", log_file], env=env)
    print(f"castord started (pid {daemon.pid}); its JSON log: {log_file}")
    started = time.monotonic()
    try:
        for task in fingerprints:
            print(f"  fingerprint {task.id[-8:]} -> {task.join(timeout=60)}")
        for task in payments:
            print(f"  payment     {task.id[-8:]} -> {task.join(timeout=60)}")
        try:
            bad.join(timeout=60)
        except ZeroDivisionError as exc:
            print(f"  divide      {bad.id[-8:]} -> raised ZeroDivisionError({exc}) as expected")
        print(f"all done in {time.monotonic() - started:.2f} s: {manager.counts()}")
        print(f"payments recorded in the app's beaver dict: {len(db.dict('payments'))}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
        print(f"castord drained and exited with status {code}")
    with open(log_file) as f:
        events = [json.loads(line)["event"] for line in f]
    print("castord log events: " + ", ".join(f"{e} x{events.count(e)}" for e in dict.fromkeys(events)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
