"""How long finished tasks stay: policy computed above the store, handed to it as data.

A task's own result_ttl (success) or failure_ttl (failed, cancelled) wins; else the
Manager's defaults. The engine turns this into the expiry time it writes with each
outcome (castor/execution.py), so no store re-derives the rule. Pure; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from castor.states import TaskStatus


@dataclass(frozen=True, slots=True)
class Retention:
    result_ttl: float | None = None  # seconds a success stays (0: deleted as it finishes); None: until purged
    failure_ttl: float | None = None  # seconds a failed or cancelled task stays; None: until purged

    def expires_at(self, options: dict[str, Any], status: TaskStatus, finished_at: float) -> float | None:
        """When a task that finished in `status` at `finished_at` is deleted; None: kept."""
        key = "result_ttl" if status == TaskStatus.SUCCESS else "failure_ttl"
        ttl = options[key] if key in options else getattr(self, key)
        return None if ttl is None else finished_at + ttl
