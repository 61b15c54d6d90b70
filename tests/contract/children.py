"""What the contract's child processes run (spawned: each opens the store afresh from its
location, as a worker on another host would)."""

from __future__ import annotations

import time
from typing import Any

from castor.states import TaskStatus
from castor.store import open_store
from castor.store.base import Settlement
from tests.contract.builders import new


def drain(location: str, owner: str, limit: int, combined: bool, start: Any, results: Any) -> None:
    """Claim and settle until nothing is due; report (owner, ids claimed, settles refused).
    combined: settle each batch with the next claim (settle_and_claim), else one by one."""
    store = open_store(location)
    claimed: list[str] = []
    refused = 0
    try:
        start.wait(60)
        done: list[Settlement] = []
        while True:
            if combined:
                accepted, batch = store.settle_and_claim(done, owner, mode="process", queues=None, limit=limit,
                                                         lease=600.0, now=time.time())
            else:
                accepted = [store.settle_one(s) for s in done]
                batch = store.claim(owner, mode="process", queues=None, limit=limit, lease=600.0, now=time.time())
            refused += accepted.count(False)
            if not batch:
                break
            claimed.extend(r.id for r in batch)
            done = [Settlement(r.id, owner, r.attempts, TaskStatus.SUCCESS, result=f'"{owner}"',
                               finished_at=time.time(), fence=r.fence) for r in batch]
    finally:
        store.close()
        results.put((owner, claimed, refused))


def fire(location: str, name: str, ticks: int, start: Any, results: Any) -> None:
    """Try to fire every tick of one schedule; report (name, ticks this process fired)."""
    store = open_store(location)
    won: list[int] = []
    try:
        start.wait(60)
        for tick in range(ticks):
            task = new(f"{name}-{tick}")
            if store.fire_schedule("shared", 1_000.0 + tick, task, now=time.time()):
                won.append(tick)
    finally:
        store.close()
        results.put((name, won))
