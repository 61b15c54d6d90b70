"""Prometheus metrics for `castord start --metrics-port PORT` (the castor[metrics] extra).

Served by prometheus_client's HTTP server from a thread of the master. Values are
read when Prometheus scrapes: task counts and queue depth from the database (each
query uses a partial index, so a scrape stays cheap on a large file), children
from the master's own view, and finished-task counters and duration histograms
from the tallies children send with their heartbeats (castord/tally.py).

Every label set castord can know in advance (registered task names x outcomes,
roles x restart reasons, states, configured roles and queues, every state of each
host in castor_daemons) is exported from the first scrape, at 0: Prometheus's
increase() and rate() only see a rise between two samples, so a counter born at 1
would hide the first crash or failure. The alert rules that read these metrics
are deploy/prometheus/castor-rules.yml.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from castor.logs import get_logger
from castord.children import PROCESS_WORKER, THREAD_HOST
from castord.control import STALE_SECONDS
from castord.errors import CastordError, ExitCode
from castord.signals import State
from castord.tally import BUCKETS

if TYPE_CHECKING:
    from castord.supervisor import Supervisor

log = get_logger("castord.metrics")

# The outcomes a child tallies for a settled attempt (castor/worker.py's on_settled).
FINISHED_STATUSES = ("success", "failed", "cancelled", "retry")
# Why the supervisor replaced a child (its _on_exit): died or went silent, or retired on purpose.
RESTART_REASONS = ("crash", "recycled")
ROLES = (PROCESS_WORKER, THREAD_HOST)
# A castord row's state in castor_daemons: what the master said, or stale.
FLEET_STATES = (*(each.value for each in State), "stale")


class CastordCollector:
    """Builds every metric family at scrape time."""

    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor
        manager = supervisor.manager
        # APP is loaded (its include= modules too) before the collector exists.
        self.task_names = sorted(manager.registry)
        self.queues = sorted({fn.options.queue for fn in manager.registry.values()}
                             | set(supervisor.config.queues or ()))

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        yield from self._database(GaugeMetricFamily)
        snapshot = self.supervisor.snapshot()
        yield from self._children(snapshot)
        yield from self._finished()
        yield from self._daemon(snapshot)

    def _database(self, gauge: Any) -> Iterator[Any]:
        store = self.supervisor.manager.store
        reachable = gauge("castor_database_up", "1 if this scrape could read the database, 0 if it could not")
        try:
            now = time.time()
            counts = store.counts_by_status()
            depth = store.pending_by_queue()
            queues = store.queue_stats(now=now)
            fleet = store.daemons()
        except Exception:  # noqa: BLE001 - a busy or sick database must not break the scrape
            log.exception("metrics.database_failed")
            reachable.add_metric([], 0)
            yield reachable
            return
        reachable.add_metric([], 1)
        yield reachable
        tasks = gauge("castor_tasks", "Tasks in the database, by status", labels=["status"])
        for status, n in counts.items():
            tasks.add_metric([str(status)], n)
        queue = gauge("castor_queue_depth", "Pending tasks, by queue", labels=["queue"])
        for name, n in sorted({**dict.fromkeys(self.queues, 0), **depth}.items()):
            queue.add_metric([name], n)
        oldest = queues["oldest_due"]
        waiting = gauge("castor_oldest_pending_age_seconds",
                        "How long the oldest due pending task has waited (0: none)")
        waiting.add_metric([], 0.0 if oldest is None else max(0.0, now - oldest))
        scheduled = gauge("castor_scheduled_tasks", "Pending tasks whose ETA is still ahead")
        scheduled.add_metric([], queues["scheduled"])
        yield from (tasks, queue, waiting, scheduled, self._fleet(gauge, fleet))

    @staticmethod
    def _fleet(gauge: Any, rows: list[dict[str, Any]]) -> Any:
        """The castords on the store (every host), by host and state; `stale` for a row
        whose heartbeat is older than control.STALE_SECONDS (what it last said is not
        trusted). Every state of each host is there, at 0 or more."""
        daemons = gauge("castor_daemons", "castords with a heartbeat row in the database (every host), by host "
                        f"and state (stale: no heartbeat for over {STALE_SECONDS:g} s)", labels=["host", "state"])
        counts: dict[tuple[str, str], int] = {}
        for row in rows:
            stale = row["heartbeat_age"] > STALE_SECONDS
            state = "stale" if stale else str((row["info"] or {}).get("state") or "unknown")
            for each in FLEET_STATES:
                counts.setdefault((row["host"], each), 0)
            counts[(row["host"], state)] = counts.get((row["host"], state), 0) + 1
        for (host, state), n in sorted(counts.items()):
            daemons.add_metric([host, state], n)
        return daemons

    def _children(self, snapshot: dict[str, Any]) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        children = GaugeMetricFamily("castor_children", "Live castord children, by role", labels=["role"])
        running = GaugeMetricFamily("castor_tasks_running_here", "Tasks this castord's children run now",
                                    labels=["role"])
        age = GaugeMetricFamily("castor_child_heartbeat_age_seconds", "Seconds since each child's last "
                                "heartbeat", labels=["role", "index"])
        rss = GaugeMetricFamily("castor_child_rss_bytes", "Resident memory of each child",
                                labels=["role", "index"])
        # The roles castord runs count from 0: every child of a role gone (or not yet
        # spawned) shows as 0, not as nothing. Process slots change with TTIN/TTOU.
        config = self.supervisor.config
        configured = [role for role, n in ((PROCESS_WORKER, snapshot["workers"] or config.workers),
                                           (THREAD_HOST, config.threads)) if n]
        by_role: dict[str, list[dict[str, Any]]] = {role: [] for role in configured}
        for child in snapshot["children"]:
            by_role.setdefault(child["role"], []).append(child)
            labels = [child["role"], str(child["index"])]
            age.add_metric(labels, child["heartbeat_age_s"])
            rss.add_metric(labels, child["rss_kb"] * 1024)
        for role, members in by_role.items():
            children.add_metric([role], len(members))
            running.add_metric([role], sum(len(c["running"]) for c in members))
        yield from (children, running, age, rss)

        restarts = CounterMetricFamily("castor_child_restarts", "Children replaced, by role and reason "
                                       "(crash: died or went silent; recycled: retired on purpose)",
                                       labels=["role", "reason"])
        zeros = {(role, reason): 0 for role in ROLES for reason in RESTART_REASONS}
        for (role, reason), n in sorted({**zeros, **self.supervisor.restarts}.items()):
            restarts.add_metric([role, reason], n)
        yield restarts

    def _finished(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        finished_counts, durations = self.supervisor.tally.snapshot()
        finished = CounterMetricFamily("castor_tasks_finished", "Attempts this castord finished, by task "
                                       "name and outcome (success, failed, cancelled, retry)",
                                       labels=["name", "status"])
        zeros = {(name, status): 0 for name in self.task_names for status in FINISHED_STATUSES}
        for (name, status), n in sorted({**zeros, **finished_counts}.items()):
            finished.add_metric([name, status], n)
        yield finished
        histogram = HistogramMetricFamily("castor_task_duration_seconds", "Run time of finished attempts",
                                          labels=["name"])
        empty = ([0] * (len(BUCKETS) + 1), 0.0)
        for name, (buckets, total) in sorted({**dict.fromkeys(self.task_names, empty), **durations}.items()):
            cumulative, edges = 0, []
            for bound, count in zip((*BUCKETS, float("inf")), buckets, strict=True):
                cumulative += count
                edges.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            histogram.add_metric([name], edges, sum_value=total)
        yield histogram

    def _daemon(self, snapshot: dict[str, Any]) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        # Always 1: a castord that can answer is up, draining included. A dead one
        # exports nothing at all; alert on Prometheus's own `up` for that.
        up = GaugeMetricFamily("castor_daemon_up", "1: this castord answers, in every state (a dead one "
                               "exports nothing: alert on Prometheus's up)")
        up.add_metric([], 1)
        state = GaugeMetricFamily("castor_daemon_state", "1 for this castord's state: running, reloading "
                                  "(after HUP), draining (after TERM: finishing its tasks), stopping",
                                  labels=["state"])
        for each in State:
            state.add_metric([each.value], 1 if each.value == snapshot["state"] else 0)
        uptime = GaugeMetricFamily("castor_daemon_uptime_seconds", "Seconds since this castord started")
        uptime.add_metric([], time.time() - self.supervisor.started_at)
        # The master's loop wakes at least every --heartbeat-interval; this endpoint
        # runs in a thread of its own, so it still answers when the loop is stuck.
        loop = GaugeMetricFamily("castor_master_loop_age_seconds",
                                 "Seconds since the master's main loop last passed (a few at most while "
                                 "it supervises; growing: the master is stuck)")
        loop.add_metric([], max(0.0, time.monotonic() - self.supervisor.last_pass))
        yield from (up, state, uptime, loop)


def serve(supervisor: Supervisor, port: int, host: str) -> Any:
    """Start the endpoint (a daemon thread); returns the server so it can be shut down."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise CastordError("--metrics-port needs prometheus_client: pip install 'castor[metrics]'",
                           ExitCode.USAGE) from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CastordCollector(supervisor))  # type: ignore[arg-type]
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise CastordError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
                           ExitCode.USAGE) from None
    log.info("metrics.serving", host=host, port=server.server_port)
    return server
