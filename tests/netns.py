"""Hosts for a fleet test, made of Linux namespaces (tests/system/test_fleet.py).

A `Network` (as root) makes one network namespace per host, each joined to the root
namespace by its own veth pair on its own /30 of a private 10.x.y.0/24 that no interface
of the machine uses: the root end is the host's "switch port" (a server in the root
namespace listens on it), the namespace end the host's own address. A command runs on a
host through `Host.command()`: `ip netns exec` into its network namespace, then
`unshare --uts` and `hostname`, so that it and everything it starts sees the host's own
name. Every step execs, so the pid Popen returns is the command's own.

Nothing else runs in a host's namespace, so its processes are found from /proc (those
whose network namespace is the host's) and ended by pid. `cut()` takes the host's link
down at the root end (a pulled cable: packets are dropped, connections hang; no reset),
`restore()` brings it back. Names carry the test process's pid and a random token, so
parallel runs do not meet; `close()` kills what is left by pid and deletes the
namespaces, which takes their veth pairs with them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.process.leftovers import kill_together
from tests.tools import require_tool, unavailable

NETNS_DIR = Path("/run/netns")  # where `ip netns add` mounts a named namespace
IP_TIMEOUT = 30.0


class NamespacesUnavailable(Exception):
    """This machine (or this process) cannot make network namespaces; the message says why."""


def ip(*args: str) -> None:
    """Run `ip ARGS`; a failure says what it tried and what ip answered."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")


def _namespace_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:  # gone, or a zombie (its namespaces are released at exit)
        return None
    return (st.st_dev, st.st_ino)


@dataclass
class Host:
    """One host: a network namespace, its link to the root namespace, its hostname."""

    name: str  # its hostname (UTS namespace of whatever runs on it)
    netns: str
    root_end: str  # the veth in the root namespace
    address: str  # the host's own address
    gateway: str  # the root end's address: where the host reaches the server

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run on this host: in its network namespace, under its own hostname."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *argv]

    def pids(self) -> list[int]:
        """The live processes in this host's network namespace (all started by the test)."""
        wanted = _namespace_id(str(NETNS_DIR / self.netns))
        if wanted is None:
            return []
        return sorted(int(entry) for entry in os.listdir("/proc")
                      if entry.isdigit() and _namespace_id(f"/proc/{entry}/ns/net") == wanted)

    def commands(self) -> dict[int, str]:
        """pid -> command line (a castord's process title) of the host's processes."""
        out = {}
        for pid in self.pids():
            try:
                out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue  # gone meanwhile
        return out

    def kill_all(self, timeout: float = 30.0) -> list[int]:
        """SIGKILL every process of the host, by pid, together (none acts on another's
        death: a master that requeues a dead child's task, a sibling that runs it), until
        none is left (one may fork meanwhile: look again); returns the pids killed."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        while pids := self.pids():
            killed += [pid for pid in pids if pid not in killed]
            kill_together(set(pids), timeout=max(1.0, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                raise RuntimeError(f"host {self.name}: processes {pids} outlived SIGKILL for {timeout} s")
            time.sleep(0.01)
        return killed

    def cut(self) -> None:
        ip("link", "set", self.root_end, "down")

    def restore(self) -> None:
        ip("link", "set", self.root_end, "up")


def unacked_tcp_bytes(pid: int) -> int:
    """Bytes process `pid` sent on its TCP sockets that no peer has acknowledged yet
    (/proc/PID/net/tcp, as its network namespace sees it): > 0 on a cut link means it
    waits for an answer that cannot come."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    unacked = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()  # sl local remote st tx_queue:rx_queue tr:when retrnsmt uid timeout inode
        if fields[9] in inodes:
            unacked += int(fields[4].split(":")[0], 16)
    return unacked


class Network:
    """The hosts `names`, each in its own network namespace with a veth link to the root
    namespace. Build with `Network.create(names)`; `close()` undoes it."""

    def __init__(self, token: str):
        self.token = token
        self.hosts: list[Host] = []

    @classmethod
    def create(cls, names: Sequence[str]) -> Network:
        """Raises NamespacesUnavailable where namespaces cannot be made (not root, no
        ip, a kernel or container that refuses)."""
        if os.geteuid() != 0:
            raise NamespacesUnavailable("making network namespaces needs root (ip netns add)")
        for tool in ("ip", "unshare", "hostname"):
            require_tool(tool, "apt-get install iproute2 util-linux hostname (.ci/apt-packages)")
        uts = subprocess.run(["unshare", "--uts", "--", "true"], capture_output=True, text=True, timeout=IP_TIMEOUT)
        if uts.returncode != 0:
            raise NamespacesUnavailable(f"cannot make a UTS namespace here (unshare --uts): {uts.stderr.strip()}")
        net = cls(secrets.token_hex(3))
        subnet = _free_subnet()
        try:
            for i, name in enumerate(names):
                net._add_host(name, i, subnet)
        except BaseException as exc:
            net.close()
            if isinstance(exc, RuntimeError):  # ip refused: no namespaces or veths here
                raise NamespacesUnavailable(f"cannot make the fleet's network here: {exc}") from exc
            raise
        return net

    def _add_host(self, name: str, index: int, subnet: ipaddress.IPv4Network) -> None:
        link = list(subnet.subnets(new_prefix=30))[index]
        gateway, address = (str(a) for a in link.hosts())
        netns = f"castor-{os.getpid()}-{self.token}-{index}"
        # veth names: at most 15 bytes.
        root_end, host_end = f"cf{self.token}{index}r", f"cf{self.token}{index}h"
        ip("netns", "add", netns)
        host = Host(name=name, netns=netns, root_end=root_end, address=address, gateway=gateway)
        self.hosts.append(host)
        ip("link", "add", root_end, "type", "veth", "peer", "name", host_end)
        ip("link", "set", host_end, "netns", netns)
        ip("addr", "add", f"{gateway}/30", "dev", root_end)
        ip("link", "set", root_end, "up")
        ip("-n", netns, "addr", "add", f"{address}/30", "dev", host_end)
        ip("-n", netns, "link", "set", host_end, "up")
        ip("-n", netns, "link", "set", "lo", "up")

    def close(self) -> None:
        """Kill what still runs on each host (by pid), delete its namespace and link."""
        problems = []
        for host in self.hosts:
            try:
                host.kill_all()
            except RuntimeError as exc:
                problems.append(str(exc))
            for args in (("link", "del", host.root_end), ("netns", "del", host.netns)):
                try:
                    ip(*args)
                except RuntimeError as exc:
                    if "Cannot find device" not in str(exc):  # gone with its namespace already
                        problems.append(str(exc))
        self.hosts = []
        if problems:
            raise RuntimeError("tearing down the fleet's network: " + "; ".join(problems))


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that overlaps no address or route of the root namespace."""
    taken = [ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False)
             for link in _ip_json("-4", "addr") for a in link.get("addr_info", [])]
    taken += [ipaddress.ip_network(r["dst"], strict=False)
              for r in _ip_json("-4", "route") if r.get("dst", "default") != "default"]
    rng = random.Random()
    for _ in range(200):
        candidate = ipaddress.IPv4Network(f"10.{rng.randrange(100, 255)}.{rng.randrange(256)}.0/24")
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise NamespacesUnavailable("no free 10.x.y.0/24 for the fleet's links: every one tried is in use")


def _ip_json(*args: str) -> list[dict]:
    done = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if done.returncode != 0:
        raise NamespacesUnavailable(f"`ip -j {' '.join(args)}` failed: {done.stderr.strip()}")
    return json.loads(done.stdout or "[]")


def network_or_skip(names: Sequence[str]) -> Network:
    """`Network.create(names)`, or skip (outside CI) / fail (in CI) saying why not."""
    try:
        return Network.create(names)
    except NamespacesUnavailable as exc:
        unavailable(str(exc))
        raise  # unreachable: unavailable() skips or fails
