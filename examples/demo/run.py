"""Run the demo end to end: enqueue tasks, run workers, print every result.

Workers here are `python -m castor` engine processes (one per mode), started
and stopped by this script by pid. castord will take their place once it lands.
"""

from __future__ import annotations

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
    print(f"enqueued {manager.count('pending')} tasks; starting workers")

    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    workers = [
        subprocess.Popen([sys.executable, "-m", "castor", APP, "--mode", "process"], env=env),
        subprocess.Popen([sys.executable, "-m", "castor", APP, "--mode", "process"], env=env),
        subprocess.Popen([sys.executable, "-m", "castor", APP, "--mode", "thread", "--threads", "4"], env=env),
    ]
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
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
