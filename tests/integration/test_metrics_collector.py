"""castord's metrics collector on a real Supervisor (not started) and a real database:
the states a running castord rarely holds still long enough to scrape (no child
alive, a drain, a database it cannot read), rendered by prometheus_client as the
endpoint renders them. tests/process/test_metrics.py scrapes a real castord."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import castor
from castord.config import Config
from castord.metrics import CastordCollector
from castord.signals import State
from castord.supervisor import Supervisor

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def manager(db_path: str) -> Iterator[castor.Manager]:
    m = castor.Manager(db_path)

    @m.task(mode="process", name="resize", queue="images")
    def resize(path):
        return path

    @m.task(mode="thread", name="mail")
    def mail(to):
        return to

    yield m
    m.close()


def supervisor(manager: castor.Manager, monkeypatch: pytest.MonkeyPatch, **config: object) -> Supervisor:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    options = {"app": "app:manager", "workers": 2, "threads": 1, **config}
    return Supervisor(Config(**options), manager)  # type: ignore[arg-type]


def scrape(sup: Supervisor) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CastordCollector(sup))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_configured_roles_and_queues_count_from_zero(manager, monkeypatch):
    m = scrape(supervisor(manager, monkeypatch, queues=("reports",)))
    # No child alive (all crashed, or none booted yet): 0, not a missing series.
    assert m[("castor_children", (("role", "process-worker"),))] == 0
    assert m[("castor_children", (("role", "thread-host"),))] == 0
    assert m[("castor_tasks_running_here", (("role", "process-worker"),))] == 0
    # The registered tasks' queues and --queues.
    assert {labels[0][1] for name, labels in m if name == "castor_queue_depth"} == {"default", "images", "reports"}
    assert m[("castor_tasks_finished_total", (("name", "mail"), ("status", "failed")))] == 0
    assert m[("castor_task_duration_seconds_sum", (("name", "resize"),))] == 0


def test_a_role_castord_does_not_run_is_not_a_child_count(manager, monkeypatch):
    m = scrape(supervisor(manager, monkeypatch, threads=0))
    assert ("castor_children", (("role", "thread-host"),)) not in m
    assert m[("castor_children", (("role", "process-worker"),))] == 0


def test_tallies_add_to_the_zeros_and_names_not_registered_appear_too(manager, monkeypatch):
    sup = supervisor(manager, monkeypatch)
    sup.tally.merge({"finished": [["mail", "success", 3], ["gone.task", "failed", 1]],
                     "durations": {"mail": [[3] + [0] * 19, 0.003]}})
    sup.restarts[("process-worker", "crash")] = 2
    m = scrape(sup)
    assert m[("castor_tasks_finished_total", (("name", "mail"), ("status", "success")))] == 3
    assert m[("castor_tasks_finished_total", (("name", "mail"), ("status", "failed")))] == 0
    assert m[("castor_tasks_finished_total", (("name", "gone.task"), ("status", "failed")))] == 1
    assert m[("castor_task_duration_seconds_count", (("name", "mail"),))] == 3
    assert m[("castor_child_restarts_total", (("reason", "crash"), ("role", "process-worker")))] == 2
    assert m[("castor_child_restarts_total", (("reason", "recycled"), ("role", "process-worker")))] == 0


@pytest.mark.parametrize("state", list(State))
def test_every_state_is_up_with_its_own_series(manager, monkeypatch, state):
    sup = supervisor(manager, monkeypatch)
    sup.state = state
    m = scrape(sup)
    assert m[("castor_daemon_up", ())] == 1  # answering is being up, a drain included
    assert {labels[0][1]: v for (name, labels), v in m.items() if name == "castor_daemon_state"} == {
        s.value: (1 if s is state else 0) for s in State}


def test_a_database_it_cannot_read_is_database_up_0_and_the_rest_still_answers(manager, monkeypatch):
    sup = supervisor(manager, monkeypatch)
    manager.store.close()  # every read now raises StoreError, as a damaged or vanished file does
    m = scrape(sup)
    assert m[("castor_database_up", ())] == 0
    assert not [name for name, _ in m if name in ("castor_tasks", "castor_queue_depth")]
    assert m[("castor_daemon_up", ())] == 1
    assert m[("castor_tasks_finished_total", (("name", "mail"), ("status", "success")))] == 0


def test_the_master_loops_age_grows_until_its_loop_passes(manager, monkeypatch):
    """A stuck master loop still answers scrapes (the endpoint has its own thread):
    castor_master_loop_age_seconds says so (CastordStuck in the shipped rules)."""
    sup = supervisor(manager, monkeypatch)
    sup.last_pass -= 120  # as if the loop had not passed for two minutes
    assert scrape(sup)[("castor_master_loop_age_seconds", ())] >= 120
    sup._tick([])  # noqa: SLF001 - one pass of the loop, with nothing ready
    assert scrape(sup)[("castor_master_loop_age_seconds", ())] < 60


def test_the_fleet_on_the_store_is_counted_by_host_and_state(manager, monkeypatch):
    """castor_daemons: every castord row on the store (any host), stale ones apart, each
    state of each host from 0."""
    store = manager.store
    now = time.time()
    for daemon_id, host, state in (("a1", "web-1", "running"), ("a2", "web-1", "running"),
                                   ("b1", "web-2", "draining")):
        store.record_daemon(daemon_id, host=host, pid=1, app="app:manager", started_at=now, info={"state": state},
                            now=now)
    clock = store.clock
    store.clock = lambda: clock() - 120  # this one's last beat was two minutes ago
    store.record_daemon("c1", host="web-3", pid=1, app="app:manager", started_at=now - 300,
                        info={"state": "running"}, now=now - 120)
    store.clock = clock
    m = scrape(supervisor(manager, monkeypatch))
    fleet = {(dict(labels)["host"], dict(labels)["state"]): v for (name, labels), v in m.items()
             if name == "castor_daemons"}
    assert fleet == {(host, state): n for host, counts in {
        "web-1": {"running": 2}, "web-2": {"draining": 1}, "web-3": {"stale": 1}}.items()
        for state in ("running", "reloading", "draining", "stopping", "stale")
        for n in [counts.get(state, 0)]}
