"""The demo application: a beaver-db file, a Manager, and two kinds of task.

The database path comes from CASTOR_DEMO_DB (the demo runner sets it); the
default is demo.db in the current directory.
"""

import hashlib
import os
import time

from beaver import BeaverDB

import castor

db = BeaverDB(os.environ.get("CASTOR_DEMO_DB", "demo.db"))
manager = castor.Manager(db)


@manager.task(mode="process")
def fingerprint(text: str, rounds: int) -> str:
    """CPU-bound: hash a text many times over."""
    digest = text.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:16]


@manager.task(mode="thread", daemon=False)
def process_payment(order_id: str, amount: float) -> dict:
    """I/O-bound and critical: records the payment in the app's own beaver-db data."""
    time.sleep(0.05)  # the payment provider's latency
    db.dict("payments")[order_id] = {"amount": amount, "at": time.time()}
    return {"status": "ok", "processed_order": order_id}


@manager.task(mode="thread")
def divide(a: float, b: float) -> float:
    return a / b
