"""One LISTEN connection per castord on PostgreSQL (issue 14): the master listens, its
children are woken through it (castor/store/pg_relay.py). Real castord, real server;
pg_stat_activity tells whose backend is whose (application_name `castor <pid>@<host>`),
and a listening backend's last statement is its LISTEN (it runs nothing after)."""

from __future__ import annotations

import ctypes
import os
import re
import socket
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.conftest import wait_until
from tests.process.test_castord import Castord
from tests.process.test_postgresql_castord import pg_app  # noqa: F401 - fixture
from tests.tools import require_tool, unavailable

WORKERS = 2


def backends(url: str) -> list[tuple[int, int, str]]:
    """(client pid, backend pid, last statement) of castor's backends in the test's database."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, pid, query FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'castor %'").fetchall()
    found = []
    for name, pid, query in rows:
        match = re.match(r"castor (\d+)@", name)
        if match:
            found.append((int(match.group(1)), pid, query))
    return found


def listening(url: str, family: set[int]) -> list[tuple[int, int]]:
    """(client pid, backend pid) of the LISTEN connections of these processes."""
    return [(client, pid) for client, pid, query in backends(url)
            if client in family and query.startswith("LISTEN")]


def start(app_dir: Path) -> tuple[Castord, set[int], set[int]]:
    """A castord with process children and a thread host, every child at work: (it,
    the children's pids, the whole family's)."""
    d = Castord(app_dir)
    d.start("--workers", str(WORKERS), "--threads", "2", app="pgapp:manager")
    d.wait_note("READY=1", timeout=30)
    spawned = d.wait_event("child.ready", count=WORKERS + 1, timeout=30)
    children = {e["pid"] for e in spawned}
    return d, children, children | {d.pid}


def run_some(pg_app) -> None:  # noqa: F811
    """Tasks of both modes, enqueued now (each .delay() notifies): they run."""
    process = [pg_app.add.delay(i, 1) for i in range(20)]
    thread = [pg_app.tadd.delay(i, 2) for i in range(20)]
    assert [t.join(timeout=30) for t in process] == [i + 1 for i in range(20)]
    assert [t.join(timeout=30) for t in thread] == [i + 2 for i in range(20)]


@pytest.mark.timeout(120)
def test_a_castord_has_one_listen_connection_its_masters(pg_app, app_dir, postgres_db_url):  # noqa: F811
    d, children, family = start(app_dir)
    try:
        run_some(pg_app)
        # Every child has been at work, and has waited on the store in between: each has
        # a backend; none of them is a LISTEN.
        wait_until(lambda: children <= {client for client, _, _ in backends(postgres_db_url)}, 30,
                   "a backend of every child")
        assert [client for client, _ in listening(postgres_db_url, family)] == [d.pid]
        run_some(pg_app)
    finally:
        d.stop()


@pytest.mark.timeout(120)
def test_children_wake_after_the_masters_listen_connection_is_ended(pg_app, app_dir, postgres_db_url):  # noqa: F811
    d, _children, family = start(app_dir)
    try:
        run_some(pg_app)
        ((_, backend),) = listening(postgres_db_url, family)
        with psycopg.connect(postgres_db_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        again = wait_until(lambda: [b for c, b in listening(postgres_db_url, family) if b != backend], 30,
                           "the master to LISTEN again")
        assert len(again) == 1
        run_some(pg_app)
        assert [client for client, _ in listening(postgres_db_url, family)] == [d.pid]
    finally:
        d.stop()


def relay_outlets(master: int, children: set[int]) -> dict[int, int]:
    """child pid -> the master's fd of that child's relay socket: the master's end of a
    Unix socket pair whose other end is the child's, opened non-blocking (the child's
    message pipe is blocking; the relay's outlet is not: castor/store/pg_relay.py)."""
    out = subprocess.run(["ss", "-xpn"], capture_output=True, text=True, check=True).stdout
    holders: dict[int, list[tuple[int, int]]] = {}  # inode -> (pid, fd)
    peer_of: dict[int, int] = {}
    for line in out.splitlines():
        match = re.search(r"\*\s+(\d+)\s+\*\s+(\d+)\s+users:\((.*)\)\s*$", line)
        if not match:
            continue
        inode, peer = int(match.group(1)), int(match.group(2))
        peer_of[inode] = peer
        holders[inode] = [(int(p), int(f)) for p, f in re.findall(r"pid=(\d+),fd=(\d+)", match.group(3))]
    found: dict[int, int] = {}
    for inode, held in holders.items():
        for pid, fd in held:
            if pid != master or not _nonblocking(pid, fd):
                continue
            for child, _ in holders.get(peer_of[inode], []):
                if child in children:
                    found[child] = fd
    return found


def _nonblocking(pid: int, fd: int) -> bool:
    flags = Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0]
    return bool(int(flags, 8) & os.O_NONBLOCK)


def shut(pid: int, fd: int) -> None:
    """Shut down another process's socket (shutdown acts on the socket, whichever copy of
    its descriptor asks): a copy taken with pidfd_getfd(2), then closed."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        copy = libc.syscall(PIDFD_GETFD, pidfd, fd, 0)
        if copy < 0:
            unavailable(f"pidfd_getfd is not allowed here ({os.strerror(ctypes.get_errno())})")
        with socket.socket(fileno=copy) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    finally:
        os.close(pidfd)


PIDFD_GETFD = 438  # the syscall's number, the same on x86-64 and arm64


@pytest.mark.timeout(120)
def test_children_whose_relay_closed_listen_on_their_own_and_say_so_once(pg_app, app_dir, postgres_db_url):  # noqa: F811
    require_tool("ss", "iproute2, to find the relay's sockets")
    d, children, family = start(app_dir)
    try:
        run_some(pg_app)
        outlets = relay_outlets(d.pid, children)
        assert set(outlets) == children, outlets
        for fd in outlets.values():
            shut(d.pid, fd)
        wait_until(lambda: {c for c, _ in listening(postgres_db_url, family)} == family, 30,
                   "every child to LISTEN on its own, beside the master")
        run_some(pg_app)
        lost = d.events("wakeup.relay_lost")
        assert sorted(e["pid"] for e in lost) == sorted(children), lost  # once each
    finally:
        d.stop()
