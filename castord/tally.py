"""Counting finished tasks and their durations, in a child and then in the master.

A child tallies each settled task (cheap: a dict update and a bisect) and ships
the tally with its next heartbeat; the master merges tallies into its totals,
which the Prometheus endpoint exposes (castord/metrics.py). Pure; no I/O.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from typing import Any

# Seconds: Prometheus's default histogram buckets, plus longer ones for slow tasks.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
           30.0, 60.0, 300.0, 900.0, 3600.0)
RECENT = 50  # the latest finished tasks kept for the dashboard


def _recent() -> deque[list[Any]]:
    return deque(maxlen=RECENT)


class Tally:
    """Finished tasks by (name, status), duration buckets by name, and the latest
    finished tasks as [id, name, status, seconds, finished_at] (the dashboard's list)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.finished: dict[tuple[str, str], int] = {}
        # name -> [count per bucket (non-cumulative; the last is +Inf), sum of seconds]
        self.durations: dict[str, tuple[list[int], float]] = {}
        self.recent = _recent()

    def add(self, name: str, status: str, seconds: float, task_id: str | None = None) -> None:
        with self._lock:
            self.recent.append([task_id, name, status, seconds, time.time()])
            key = (name, status)
            self.finished[key] = self.finished.get(key, 0) + 1
            buckets, total = self.durations.get(name) or ([0] * (len(BUCKETS) + 1), 0.0)
            buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
            self.durations[name] = (buckets, total + seconds)

    def take(self) -> dict[str, Any] | None:
        """What was tallied since the last take (for a heartbeat), or None."""
        with self._lock:
            if not self.finished:
                return None
            out = {"finished": [[n, s, c] for (n, s), c in self.finished.items()],
                   "durations": {n: [b, t] for n, (b, t) in self.durations.items()},
                   "recent": list(self.recent)}
            self.finished, self.durations, self.recent = {}, {}, _recent()
            return out

    def merge(self, delta: dict[str, Any]) -> None:
        """Add a child's take() into these totals."""
        with self._lock:
            for name, status, count in delta.get("finished", []):
                self.finished[(name, status)] = self.finished.get((name, status), 0) + count
            for name, (buckets, total) in delta.get("durations", {}).items():
                mine, my_total = self.durations.get(name) or ([0] * (len(BUCKETS) + 1), 0.0)
                self.durations[name] = ([a + b for a, b in zip(mine, buckets, strict=True)], my_total + total)
            self.recent.extend(delta.get("recent", []))

    def latest(self) -> list[list[Any]]:
        """The latest finished tasks, newest first."""
        with self._lock:
            return sorted(self.recent, key=lambda r: r[4], reverse=True)

    def ended(self) -> int:
        """Tasks that ended (a retried attempt is not an end), in these totals."""
        with self._lock:
            return sum(count for (_, status), count in self.finished.items() if status != "retry")

    def snapshot(self) -> tuple[dict[tuple[str, str], int], dict[str, tuple[list[int], float]]]:
        with self._lock:
            return dict(self.finished), {n: (list(b), t) for n, (b, t) in self.durations.items()}
