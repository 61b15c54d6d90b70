"""The tasks, and the Manager they register with: what castord loads.

castord runs `examples.fastapi_app.tasks:manager`, so workers never import
FastAPI. The database path comes from CASTOR_FASTAPI_DB (default
fastapi_app.db in the current directory); the web app and castord must agree.

The Manager gets the path, not an open BeaverDB: castor opens its own connection
in each process that uses it, and `manager.db` opens the app's BeaverDB on first
use, in the process that uses it. A BeaverDB opened here, at import time, would be
inherited by every worker a pre-fork server forks after importing the app
(`gunicorn --preload`), and an inherited BeaverDB hangs (its threads stayed in the
parent): docs/web.md, "Pre-fork servers".
"""

import os
import time

import castor

manager = castor.Manager(os.environ.get("CASTOR_FASTAPI_DB", "fastapi_app.db"))


@manager.task(mode="process")
def complex_calculation(a: int, b: int) -> int:
    """CPU-bound: the seed's example task."""
    return a + b


@manager.task(mode="thread", daemon=False, validate=True)
def process_payment(order_id: str, amount: float) -> dict:
    """I/O-bound and critical: records the payment in the app's own beaver-db data."""
    manager.db.dict("payments")[order_id] = {"amount": amount, "at": time.time()}
    return {"status": "ok", "processed_order": order_id}


@manager.task(mode="process")
def build_report(sections: int) -> dict:
    """A longer task that reports its progress (GET /tasks/{id} shows it)."""
    for done in range(1, sections + 1):
        castor.progress(done / sections, f"section {done} of {sections}")
    return {"sections": sections}
