"""Throughput and failures over the last hour, from the store's counts, drawn as SVG bars.

The store keeps no time series yet. What it can count is tasks that finished
between two instants, by status. So the chart shows the tasks that finished in each five minutes and
are still stored in that state: a success deleted since (result_ttl) or a failure
retried since is not in it. Each bucket is one count of a finished_at range (both
stores index finished rows by (status, finished_at)), so its cost is the rows that
finished in those five minutes, not every finished row.
"""

from __future__ import annotations

from dataclasses import dataclass

from castor.states import TaskStatus
from castor.store import Query, Store

BUCKET_SECONDS = 300
BUCKETS = 12
RATE_WINDOW = 60  # "tasks per second now" is the last minute's mean

# The SVG's drawing area, in its own units (the CSS scales it).
WIDTH, HEIGHT = 600, 120


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    count: int
    label: str


@dataclass(frozen=True, slots=True)
class Throughput:
    succeeded: list[int]
    failed: list[int]
    per_second: float  # tasks that ended (success or failure) per second over the last minute

    @property
    def peak(self) -> int:
        return max([*self.succeeded, *self.failed, 0])

    def bars(self) -> list[tuple[str, Bar]]:
        """("success" | "failed", bar) for each bucket, two bars side by side."""
        slot = WIDTH / BUCKETS
        scale = (HEIGHT - 4) / self.peak if self.peak else 0.0
        out = []
        for i, (ok, bad) in enumerate(zip(self.succeeded, self.failed, strict=True)):
            minutes = (BUCKETS - i) * BUCKET_SECONDS // 60
            for offset, kind, n in ((0.1, "success", ok), (0.5, "failed", bad)):
                height = n * scale
                out.append((kind, Bar(x=i * slot + offset * slot, y=HEIGHT - height, width=slot * 0.4,
                                      height=height, count=n,
                                      label=f"{n} {kind} from {minutes} to {minutes - 5} min ago")))
        return out


def _finished_between(store: Store, status: TaskStatus, edges: list[float]) -> list[int]:
    """Per bucket [edges[i], edges[i+1]): a range of the finished-rows index each."""
    return [store.count(Query(status=status, finished_after=a, finished_before=b))
            for a, b in zip(edges, edges[1:], strict=False)]


def last_hour(store: Store, *, now: float) -> Throughput:
    edges = [now - (BUCKETS - i) * BUCKET_SECONDS for i in range(BUCKETS + 1)]
    edges[-1] = now + 1e-6  # finished_before is strict: count what finished at `now` too
    window = [now - RATE_WINDOW, edges[-1]]
    ended_last_minute = sum(_finished_between(store, s, window)[0] for s in (TaskStatus.SUCCESS, TaskStatus.FAILED))
    return Throughput(succeeded=_finished_between(store, TaskStatus.SUCCESS, edges),
                      failed=_finished_between(store, TaskStatus.FAILED, edges),
                      per_second=ended_last_minute / RATE_WINDOW)
