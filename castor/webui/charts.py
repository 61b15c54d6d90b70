"""Throughput and failures over the last hour, from the store's counts, drawn as SVG bars.

The store keeps no time series yet. What it can count is tasks that finished
before an instant, by status; the count for a bucket is the difference of two
such counts. So the chart shows the tasks that finished in each five minutes and
are still stored in that state: a success deleted since (result_ttl) or a failure
retried since is not in it. Each count walks every finished row of its status,
which is fine for a small store and slow for millions (docs/web-dashboard.md).
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


def _finished_before(store: Store, status: TaskStatus, instants: list[float]) -> list[int]:
    return [store.count(Query(status=status, finished_before=t)) for t in instants]


def _differences(cumulative: list[int]) -> list[int]:
    # Never negative: a purge between two counts may make a later count smaller.
    return [max(0, b - a) for a, b in zip(cumulative, cumulative[1:], strict=False)]


def last_hour(store: Store, *, now: float) -> Throughput:
    edges = [now - (BUCKETS - i) * BUCKET_SECONDS for i in range(BUCKETS + 1)]
    edges[-1] = now + 1e-6  # finished_before is strict: count what finished at `now` too
    recent = now - RATE_WINDOW
    succeeded = _finished_before(store, TaskStatus.SUCCESS, [*edges, recent])
    failed = _finished_before(store, TaskStatus.FAILED, [*edges, recent])
    ended_last_minute = max(0, succeeded[-2] - succeeded[-1]) + max(0, failed[-2] - failed[-1])
    return Throughput(succeeded=_differences(succeeded[:-1]), failed=_differences(failed[:-1]),
                      per_second=ended_last_minute / RATE_WINDOW)
