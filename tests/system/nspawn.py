"""A Debian container booted with `systemd-nspawn -b`: a real systemd as PID 1.

The root is built once by scripts/systemd-root (debootstrap, ~40 s; `.ci/run` builds it)
and cached outside the repo. It is booted with --volatile=overlay: whatever a test
writes goes to a tmpfs over it, so every boot starts from the same root and the cache
is never changed. Commands run inside with nsenter (util-linux) in the container's
namespaces; nothing needs systemd-machined on the host, whose PID 1 need not be systemd.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.tools import require_tool, unavailable

ROOT_DIR = Path(os.environ.get("CASTOR_SYSTEMD_ROOT", "/var/tmp/castor-systemd-root"))
# The root's own PATH: the caller's (a venv, pyenv shims) means nothing in there.
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def root_or_skip() -> Path:
    """The built root, or skip (outside CI) / fail (in CI) saying how to get one."""
    if os.geteuid() != 0:
        unavailable("booting a systemd container needs root (systemd-nspawn)")
    require_tool("systemd-nspawn", "apt-get install systemd-container")
    require_tool("nsenter", "apt-get install util-linux")
    rootfs = ROOT_DIR / "rootfs"
    if not (rootfs / "usr/lib/systemd/systemd").exists() or not (ROOT_DIR / "venv.stamp").exists():
        unavailable(f"no container root at {rootfs}: build it with scripts/systemd-root (as root, ~1 min)")
    return rootfs


class Container:
    """One booted container, started by a test and shut down by its pids."""

    def __init__(self, rootfs: Path, name: str, workdir: Path, binds: dict[Path, str]):
        self.rootfs = rootfs
        self.name = name
        self.console_log = workdir / f"{name}.console.log"
        self.binds = binds
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0  # the container's PID 1, as the host numbers it

    def boot(self, timeout: float = 120) -> Container:
        args = ["systemd-nspawn", "--quiet", "--directory", str(self.rootfs), "--volatile=overlay",
                "--boot", "--console=pipe", "--machine", self.name,
                # No systemd-machined or host systemd to register with, or to put a scope in.
                "--register=no", "--keep-unit"]
        args += [f"--bind-ro={host}:{inside}" for host, inside in self.binds.items()]
        with open(self.console_log, "wb") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.leader:
            self.leader = self._find_leader()
            if self.proc.poll() is not None:
                unavailable(f"systemd-nspawn cannot boot here (exit {self.proc.returncode}):\n{self.console()}")
            if time.monotonic() > deadline:
                unavailable(f"systemd-nspawn started no systemd in {timeout} s:\n{self.console()}")
            time.sleep(0.05)
        # Until systemd has its private bus up, systemctl cannot reach it: ask again.
        while True:
            state = self.run("systemctl", "is-system-running", "--wait", check=False,
                             timeout=max(1.0, deadline - time.monotonic()))
            if state.stdout.strip() in ("running", "degraded"):
                return self
            if time.monotonic() > deadline or self.proc.poll() is not None:
                failed = self.run("systemctl", "--failed", "--no-pager", check=False).stdout
                unavailable(f"the container's systemd did not finish booting: {state.stdout.strip()!r} "
                            f"{state.stderr.strip()!r}\n{failed}\n{self.console()}")
            time.sleep(0.1)

    def _find_leader(self) -> int:
        """nspawn's child running systemd (the container's PID 1)."""
        assert self.proc is not None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            for pid in children:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        except OSError:
            pass
        return 0

    def run(self, *command: str, check: bool = True, timeout: float = 60, user: str | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside (as root, or as `user`), with the container's PATH only."""
        if user is not None:
            command = ("runuser", "-u", user, "--", *command)
        argv = ["nsenter", "--target", str(self.leader), "--all", "--",
                "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", *command]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=stdin)
        if check and result.returncode != 0:
            pytest.fail(f"in the container, {' '.join(command)} exited {result.returncode}:\n"
                        f"{result.stdout}{result.stderr}")
        return result

    def sh(self, script: str, *, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """A shell script inside, as root; it stops at the first failing command."""
        return self.run("sh", "-ec", script, timeout=timeout, stdin=stdin)

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def shutdown(self, timeout: float = 60) -> None:
        """Halt the container (nspawn turns a SIGTERM into a clean poweroff), then
        SIGKILL its PID 1 (which ends every process in it) if that does not end it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                if self.leader:
                    try:
                        os.kill(self.leader, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self.proc = None
