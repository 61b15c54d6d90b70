"""The seed document's example app, as written (BeaverDB for beaverdb.Database)."""

from __future__ import annotations

import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)

MAIN = '''
# main.py (Application Entry Point)
import os
from beaver import BeaverDB
import castor
# 1. Create a database instance
db = BeaverDB(os.environ["CASTOR_TEST_DB"])
# 2. Create a Manager instance, which holds the db connection
manager = castor.Manager(db)
'''

TASKS = '''
# tasks.py
from main import manager # Import the manager instance from the entry point
import time
@manager.task(mode='process')
def complex_calculation(a, b):
    """A CPU-bound task that must run in a separate process."""
    time.sleep(2) # Simulate heavy computation
    return a + b

@manager.task(mode='thread', daemon=False)
def process_payment(order_id: str):
    """A critical I/O-bound task that must be allowed to finish."""
    print(f"Processing payment for {order_id}")
    time.sleep(1) # Simulate network latency
    return {"status": "ok", "processed_order": order_id}
'''

CLIENT = '''
# api/routes.py + app_logic.py
import asyncio
from tasks import complex_calculation, process_payment
from main import manager

task = complex_calculation.delay(10, 20)
print(f"Dispatched calculation task with ID: {task.id}")
assert task.status() in ("pending", "running")
assert not task
payment = process_payment.delay("order-42")
same = manager.get(task.id)
assert same.id == task.id
result = task.join(timeout=30)
assert result == 30, result
assert task and task.status() == "success"
assert asyncio.run(payment.resolve(timeout=30)) == {"status": "ok", "processed_order": "order-42"}
assert manager.get_task_by_id(payment.id).join(timeout=0.1)["status"] == "ok"
print("SEED-OK")
'''


def test_seed_example_app_works_as_written(app_dir, processes):
    (app_dir / "main.py").write_text(textwrap.dedent(MAIN))
    (app_dir / "tasks.py").write_text(textwrap.dedent(TASKS))
    (app_dir / "client.py").write_text(textwrap.dedent(CLIENT))
    # The worker must import the module that defines the tasks; tasks.py
    # re-exports the seed's `manager`, so APP is tasks:manager.
    processes.worker("tasks:manager", "--mode", "process")
    processes.worker("tasks:manager", "--mode", "thread")
    client = processes.start("client.py")
    out, _ = client.communicate(timeout=45)
    assert client.returncode == 0, out.decode()
    assert b"SEED-OK" in out
