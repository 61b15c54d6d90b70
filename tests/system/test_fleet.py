"""A fleet (issue 14, section 3): two castords as two hosts sharing one PostgreSQL queue.

Each host is a network namespace with its own address and a veth link to the root
namespace, where a throwaway PostgreSQL listens on the links' root ends (TCP, password);
each castord runs under its own hostname (a UTS namespace), so the store sees two hosts
(tests/netns.py). The filesystem is shared: the app module, the run log every task appends
"label host:pid" to, and the castords' logs. The test process reaches the server through
its unix socket, which no link fault touches.

Under load (process and thread tasks; "hold" tasks that run until the test releases them,
so that host A surely holds some when the fault strikes), host A either dies (SIGKILL to
every process in its namespace) or loses its link (then gets it back). Either way every
task ends `success`; only tasks host A held ran twice, and their last run is host B's;
host B took them back after their leases expired, within the lease (+ a margin) of the
fault, by the times the store recorded; every stored result comes from the host of the
claim the store last gave the task (fencing: a late settle of host A's, refused, never
overwrites host B's). A periodic task under both castords fires each tick once, and
`castord status` lists both hosts.

Skipped outside CI without root, iproute2 or PostgreSQL's server; CI must run them
(tests/tools.py). Every test has a timeout, and its fixtures kill what runs on the hosts
by pid, delete the namespaces and drop the database even when it fails.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import psycopg
import pytest

import castor
from castor.store.base import Query, TaskRecord
from tests.conftest import REPO, wait_until
from tests.netns import Host, Network, network_or_skip, unacked_tcp_bytes
from tests.postgres import PORT, SUPERUSER, PostgresFailed, PostgresUnavailable, TestPostgres, ThrowawayServer
from tests.process.test_castord import CASTORD, Castord, run_cli
from tests.process.test_periodic import fired_ticks, stop_between_ticks
from tests.tools import unavailable

# Short leases so that recovery is quick: the shortest castord accepts with this
# heartbeat (castord/config.py minimum_lease: 1.5 x (3 + 0.25 + 2) = 7.875 s). The
# heartbeat timeout stays long enough that a busy machine does not get a child killed
# as unresponsive (its tasks would run twice, and not because of the fault).
LEASE = 8.0
HEARTBEAT = ("--lease", str(LEASE), "--heartbeat-interval", "0.25", "--heartbeat-timeout", "3")
# After a lease expires: up to one recovery round of host B's workers
# (castor/worker.py RECOVERY_SECONDS = 1 s), then a claim behind a 50 ms task.
RECOVERY_MARGIN = 4.0
# How much earlier than its claim a claimer's recorded start may be (its `now` is read before
# the claim's round trip; far more than a round trip, far less than a lease).
CLAIM_CLOCK_SLACK = 0.25
WORKERS, THREADS = 2, 4
# The process titles of a castord's processes (SPEC section 4; castord/forkserver.py).
TITLES = ("castord: master", "castord: fork server", "castord: process-worker", "castord: thread-host")
# What `castord status --json` tells of each castord of the fleet ("fleet": [...]).
FLEET_KEYS = {"host", "pid", "app", "state", "started_at", "heartbeat_age_s", "stale", "workers", "threads", "busy"}
LOAD = 150  # tasks of each mode

FLEET_APP = '''
import os, socket, time
import castor

manager = castor.Manager(os.environ["FLEET_URL"])
RUNS = os.environ["FLEET_RUNS"]
RELEASE = os.environ["FLEET_RELEASE"]


def ran(label):
    """Note this run in the run log (one append: concurrent lines never mix); return who ran it."""
    me = f"{socket.gethostname()}:{os.getpid()}"
    with open(RUNS, "a") as f:
        f.write(f"{label} {me}\\n")
    return me


def held(label):
    me = ran(label)
    deadline = time.monotonic() + 60
    while not os.path.exists(RELEASE) and time.monotonic() < deadline:
        time.sleep(0.02)
    return me


@manager.task(mode="process", name="work")
def work(label):
    me = ran(label)
    time.sleep(0.05)  # keeps both hosts busy while the fault strikes
    return me


@manager.task(mode="thread", name="twork")
def twork(label):
    me = ran(label)
    time.sleep(0.05)
    return me


@manager.task(mode="process", name="hold")
def hold(label):
    return held(label)


@manager.task(mode="thread", name="thold")
def thold(label):
    return held(label)
'''

TICK_APP = '''
from fleetapp import manager


@manager.periodic(every=1, mode="thread", name="tick")
def tick():
    return "tock"
'''


# --- the hosts and their server (one per module: initdb takes a while) ----------------

@dataclass
class FleetNet:
    net: Network
    server: ThrowawayServer
    postgres: TestPostgres

    @property
    def a(self) -> Host:
        return self.net.hosts[0]

    @property
    def b(self) -> Host:
        return self.net.hosts[1]


@pytest.fixture(scope="module")
def fleet_net() -> Iterator[FleetNet]:
    token = secrets.token_hex(2)
    net = network_or_skip([f"fleet-a-{token}", f"fleet-b-{token}"])
    try:
        # A transaction left open by a host whose link is cut holds its rows (claims skip
        # them, recovery too) until the server ends the session: the setting a fleet's
        # server needs (docs/postgresql.md).
        server = ThrowawayServer(fsync=False, listen=[h.gateway for h in net.hosts],
                                 password=secrets.token_hex(16),
                                 settings={"idle_in_transaction_session_timeout": "2s"})
        try:
            server.start()
        except PostgresUnavailable as exc:
            unavailable(str(exc))
        except PostgresFailed as exc:
            pytest.fail(str(exc), pytrace=False)
        try:
            yield FleetNet(net, server, TestPostgres(server.url(), server))
        finally:
            server.stop()
    finally:
        net.close()


def test_a_server_on_tcp_needs_a_password() -> None:
    with pytest.raises(ValueError, match="needs a password"):
        ThrowawayServer(fsync=False, listen=["10.0.0.1"])


@pytest.mark.timeout(60)
def test_the_fleets_server_lets_in_tcp_clients_with_the_password_only(fleet_net: FleetNet) -> None:
    address = fleet_net.a.gateway
    url = fleet_net.server.tcp_url(address)
    with psycopg.connect(url, connect_timeout=10) as conn:
        assert conn.execute("SELECT inet_server_addr()::text").fetchone() == (f"{address}/32",)
    no_password = f"postgresql://{SUPERUSER}@{address}:{PORT}/postgres"
    for wrong in (url.replace(fleet_net.server.password or "", "wrong"), no_password):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(wrong, connect_timeout=10).close()


# --- one test's fleet ------------------------------------------------------------------

class HostCastord(Castord):
    """A castord started on a host (its namespace, its hostname), reaching the store over
    the host's link; stopped by its pid, and whatever it left on the host killed by pid."""

    def __init__(self, app_dir: Path, host: Host, url: str):
        super().__init__(app_dir, f"castord-{host.name}")
        self.host = host
        self.url = url

    def start(self, *extra: str, app: str = "fleetapp:manager", env: dict[str, str] | None = None) -> HostCastord:
        args = [CASTORD, "start", app, "--log-format", "json", "--log-file", str(self.log_file),
                "--workers", str(WORKERS), "--threads", str(THREADS), *HEARTBEAT, *extra]
        full_env = {**os.environ, "PYTHONPATH": f"{self.app_dir}{os.pathsep}{REPO}", "FLEET_URL": self.url,
                    "NOTIFY_SOCKET": self.sock_path, **(env or {})}
        self.proc = subprocess.Popen(self.host.command(args), cwd=self.app_dir, env=full_env,
                                     start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return self

    def stop(self) -> None:
        super().stop()
        self.host.kill_all()


@dataclass
class Fleet:
    net: FleetNet
    dir: Path
    app: ModuleType  # fleetapp as the test process imports it: its Manager uses the unix socket
    a: HostCastord
    b: HostCastord
    runs: Path
    release: Path

    @property
    def client(self) -> castor.Manager:
        return self.app.manager

    def start(self, *daemons: HostCastord, app: str = "fleetapp:manager") -> None:
        for d in daemons:
            d.start(app=app)
        for d in daemons:
            d.wait_note("READY=1", timeout=60)

    def run_log(self) -> dict[str, list[str]]:
        """label -> who ran it ("host:pid"), in the order the runs started."""
        runs: dict[str, list[str]] = {}
        if self.runs.exists():
            for line in self.runs.read_text().splitlines():
                label, who = line.split()
                runs.setdefault(label, []).append(who)
        return runs

    def runs_on(self, host: Host, labels: list[str]) -> list[str]:
        log = self.run_log()
        return [label for label in labels if any(w.startswith(host.name + ":") for w in log.get(label, []))]

    def wait_sessions_gone(self, host: Host, timeout: float = 30.0) -> None:
        """Wait until the server has no session from `host` left. A killed host's last
        messages (a settle's COMMIT) may still sit in the server's socket buffer, and its
        backend runs them before it sees the end of the connection: only once every backend
        of the host has gone is what the store says the host holds final."""
        def gone() -> bool:
            with psycopg.connect(self.net.server.url(), connect_timeout=10) as conn:
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE client_addr = %s::inet",
                                   (host.address,)).fetchone()
            return row is not None and row[0] == 0
        wait_until(gone, timeout, f"the server to end every session of host {host.name}")

    def held_by(self, host: Host) -> dict[str, TaskRecord]:
        """The tasks the store says `host` holds now (running, its owner token)."""
        running = self.client.store.list(Query(status=castor.TaskStatus.RUNNING))
        return {r.id: r for r in running if r.owner and r.owner.startswith(host.name + ":")}


@pytest.fixture
def fleet(fleet_net: FleetNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    (tmp_path / "fleetapp.py").write_text(textwrap.dedent(FLEET_APP))
    (tmp_path / "fleettick.py").write_text(textwrap.dedent(TICK_APP))
    runs, release = tmp_path / "runs.log", tmp_path / "release"
    with fleet_net.postgres.database() as url:
        dbname = urlsplit(url).path.lstrip("/")
        for name, value in (("FLEET_URL", url), ("FLEET_RUNS", str(runs)), ("FLEET_RELEASE", str(release))):
            monkeypatch.setenv(name, value)
        monkeypatch.syspath_prepend(str(tmp_path))
        sys.modules.pop("fleetapp", None)
        import fleetapp
        a, b = (HostCastord(tmp_path, h, fleet_net.server.tcp_url(h.gateway, dbname)) for h in fleet_net.net.hosts)
        try:
            yield Fleet(fleet_net, tmp_path, fleetapp, a, b, runs=runs, release=release)
        finally:
            for host in fleet_net.net.hosts:
                host.restore()
            for d in (a, b):
                d.stop()
            fleetapp.manager.close()
            sys.modules.pop("fleetapp", None)


# --- what every fault must leave --------------------------------------------------------

def host_of(who: str) -> str:
    return who.split(":", 1)[0]


def enqueue_holds(fleet: Fleet) -> dict[str, castor.Task]:
    """One process and two thread tasks that run until fleet.release exists, on host A
    (the only castord running yet); returns once A runs them all."""
    app = fleet.app
    holds = {"hold-p": app.hold.delay("hold-p"), **{label: app.thold.delay(label) for label in ("hold-t0", "hold-t1")}}
    wait_until(lambda: len(fleet.runs_on(fleet.net.a, list(holds))) == len(holds), 30,
               "host A to run the hold tasks")
    return holds


def enqueue_load(fleet: Fleet) -> dict[str, castor.Task]:
    app = fleet.app
    load = {f"p{i}": app.work.delay(f"p{i}") for i in range(LOAD)}
    load.update({f"t{i}": app.twork.delay(f"t{i}") for i in range(LOAD)})
    # Both hosts are busy with it before the fault strikes.
    for host in (fleet.net.a, fleet.net.b):
        def busy(host: Host = host) -> bool:
            return len(fleet.runs_on(host, list(load))) >= 5
        wait_until(busy, 30, f"{host.name} to run some of the load")
    return load


def assert_delivered_once_or_rerun_from_a(fleet: Fleet, tasks: dict[str, castor.Task],
                                         held: dict[str, TaskRecord]) -> dict[str, TaskRecord]:
    """Every task succeeded; its stored result is the last claim's own; a task ran twice
    only if host A held it at the fault, and then its other runs were host A's. Returns
    the records of the tasks host A held that host B finished (the recovered ones)."""
    a, b = fleet.net.a.name, fleet.net.b.name
    results = {label: task.join(timeout=60) for label, task in tasks.items()}
    log = fleet.run_log()
    recovered = {}
    for label, task in tasks.items():
        result, record = results[label], task.info()
        assert record.status == castor.TaskStatus.SUCCESS, (label, record)
        who = log.get(label, [])
        # Fencing: the result written is that of the claim holding the task (its owner token
        # names the host), never a stale attempt's.
        assert record.owner is not None and host_of(record.owner) == host_of(result), (label, result, record.owner)
        assert result in who, (label, result, who)
        if len(who) > 1:
            assert task.id in held, f"{label} ran {len(who)} times ({who}) but host A did not hold it"
            assert host_of(result) == b and all(host_of(w) == a for w in who if w != result), (label, who)
        if task.id in held and host_of(result) == b:
            recovered[task.id] = record
    return recovered


def assert_recovered_by_b_within_the_lease(fleet: Fleet, recovered: dict[str, TaskRecord],
                                           held: dict[str, TaskRecord], fault_at: float) -> None:
    """Host B claimed each task only once A's lease on it had expired, and no later than a
    lease (+ the margin) after the fault: times as the store recorded them."""
    for task_id, record in recovered.items():
        expired, claimed = held[task_id].lease_expires, record.started_at
        assert expired is not None and claimed is not None, (held[task_id], record)
        # A start is the claimer's clock as read before its claim's round trip, while the
        # lease's end is the server's: the claim itself came later than the start says (CI
        # once saw a start 1 ms before the lease's end). That the server found the lease
        # expired is the requeue line below.
        assert expired - CLAIM_CLOCK_SLACK < claimed <= fault_at + LEASE + RECOVERY_MARGIN, (
            f"task {task_id}: A's lease ran to {expired:.3f}, B claimed it at {claimed:.3f}, "
            f"the fault struck at {fault_at:.3f} (lease {LEASE} s)")
    requeued = {e["task_id"] for e in fleet.b.events("task.requeued") if e["reason"] == "lease expired"}
    assert set(recovered) <= requeued, "host B's workers did not take back every task A held"


def hold_and_load(fleet: Fleet) -> tuple[dict[str, castor.Task], dict[str, castor.Task]]:
    fleet.start(fleet.a)
    holds = enqueue_holds(fleet)
    fleet.start(fleet.b)
    return holds, enqueue_load(fleet)


# --- the tests -------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_a_host_killed_under_load_loses_nothing_and_b_takes_over_within_the_lease(fleet):
    holds, load = hold_and_load(fleet)

    processes = fleet.net.a.commands()
    fault_at = fleet.client.store.server_clock()
    killed = fleet.net.a.kill_all()
    fleet.wait_sessions_gone(fleet.net.a)
    held = fleet.held_by(fleet.net.a)
    fleet.release.touch()
    # Every process of host A died at once: master, fork server, every child.
    kinds = sorted(next((t for t in TITLES if cmd.startswith(t)), cmd) for pid, cmd in processes.items()
                   if pid in killed)
    assert kinds == sorted([TITLES[0], TITLES[1], *[TITLES[2]] * WORKERS, TITLES[3]]), processes
    assert {t.id for t in holds.values()} <= set(held), "host A held its hold tasks when it died"

    recovered = assert_delivered_once_or_rerun_from_a(fleet, {**holds, **load}, held)
    # A died: B finished everything A held, the hold tasks after running them a second time.
    assert set(recovered) == set(held)
    log = fleet.run_log()
    for label in holds:
        assert [host_of(w) for w in log[label]] == [fleet.net.a.name, fleet.net.b.name], log[label]
    assert_recovered_by_b_within_the_lease(fleet, recovered, held, fault_at)
    fleet.b.signal(signal.SIGTERM)
    assert fleet.b.wait_exit(30) == 0


@pytest.mark.timeout(150)
def test_a_host_cut_off_under_load_is_fenced_when_it_comes_back(fleet):
    holds, load = hold_and_load(fleet)

    fault_at = fleet.client.store.server_clock()
    fleet.net.a.cut()
    held = fleet.held_by(fleet.net.a)
    fleet.release.touch()  # A's hold tasks end now, cut off: their settles wait for the link
    assert {t.id for t in holds.values()} <= set(held), "host A held its hold tasks when cut off"
    # B takes back what A held once the leases expire, and runs it (A cannot settle anything).
    def taken_over() -> bool:
        records = [fleet.client.store.get(task_id) for task_id in held]
        return all(r is not None and (r.status.finished or host_of(r.owner or "") == fleet.net.b.name)
                   for r in records)
    wait_until(taken_over, LEASE + 60, "host B to take over every task A held")
    for label, task in holds.items():
        assert host_of(task.join(timeout=60)) == fleet.net.b.name, label
    fleet.net.a.restore()

    recovered = assert_delivered_once_or_rerun_from_a(fleet, {**holds, **load}, held)
    assert {t.id for t in holds.values()} <= set(recovered)
    assert_recovered_by_b_within_the_lease(fleet, recovered, held, fault_at)
    # Back on the network, A's settles of its hold tasks reach the store and are refused.
    hold_ids = {t.id for t in holds.values()}

    def fenced() -> set[str]:
        return hold_ids & {e["task_id"] for e in fleet.a.events("task.settle_rejected")}
    wait_until(lambda: fenced() == hold_ids, 90, "host A's late settles to be refused")
    for label, task in holds.items():
        assert host_of(task.join(timeout=0)) == fleet.net.b.name, label  # still B's results
    # A is a working member of the fleet again: it drains cleanly.
    for d in (fleet.a, fleet.b):
        d.signal(signal.SIGTERM)
    for d in (fleet.a, fleet.b):
        assert d.wait_exit(60) == 0


@pytest.mark.timeout(90)
def test_a_cut_off_host_still_answers_sigterm(fleet):
    fleet.start(fleet.a)
    fleet.net.a.cut()
    wait_until(lambda: unacked_tcp_bytes(fleet.a.pid), 30, "host A's master to write to the server, cut off")
    fleet.a.signal(signal.SIGTERM)
    # A master acts on a signal within a loop round; the link stays down all along.
    fleet.a.wait_event("castord.signal", timeout=10, signal="SIGTERM")


@pytest.mark.timeout(90)
def test_a_periodic_task_fires_each_tick_once_across_hosts(fleet):
    fleet.start(fleet.a, fleet.b, app="fleettick:manager")
    wait_until(lambda: fleet.client.count(name="tick") >= 5, 30, "5 ticks fired")
    stop_between_ticks(fleet.client, fleet.a, fleet.b)

    for d in (fleet.a, fleet.b):
        assert len(d.events("periodic.scheduled")) == 1  # both hosts ran a scheduler
    ticks = fired_ticks(fleet.a, fleet.b)
    total = fleet.client.count(name="tick")
    assert len(ticks) == len(set(ticks)) == total >= 5  # each tick enqueued once, by one host
    ids = {e["task_id"] for d in (fleet.a, fleet.b) for e in d.events("periodic.fired")}
    assert ids == {t.id for t in fleet.client.tasks(name="tick", limit=None)}
    assert fleet.client.count(name="tick", status="success") == total


@pytest.mark.timeout(90)
def test_castord_status_lists_both_hosts(fleet):
    fleet.start(fleet.a, fleet.b)
    assert fleet.app.twork.delay("status").join(timeout=30)
    status = run_cli(fleet.dir, "status", "fleetapp:manager", "--json")
    report = json.loads(status.stdout)
    assert "fleet" in report, f"castord status shows no fleet view: {report}"
    rows = report["fleet"]
    # One entry per castord on the store, by host then pid; this host (the test's) runs none.
    assert [(r["host"], r["pid"]) for r in rows] == [(fleet.net.a.name, fleet.a.pid), (fleet.net.b.name, fleet.b.pid)]
    for row in rows:
        assert FLEET_KEYS <= set(row), row
        assert row["app"] == "fleetapp:manager" and row["state"] == "running", row
        assert row["stale"] is False and row["heartbeat_age_s"] >= 0, row
        assert row["workers"] == WORKERS and row["threads"] == THREADS, row
        assert isinstance(row["busy"], int) and isinstance(row["started_at"], float), row
