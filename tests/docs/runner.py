"""Running the code samples of a docs page, in document order.

The conventions a page follows (docs/testing.md describes them for writers):

* ```python blocks run in one Python session per page (tests/docs/session.py),
  in order, so later blocks use names from earlier ones. Top-level `await` works.
* A ```python block whose first line is `# name.py` is a file: it is written to
  the page's working directory (and imported from there), not run.
* ```bash / ```sh / ```shell blocks run with `bash -euo pipefail` in the same
  directory, with the venv's `castord` first on PATH; every command must succeed
  (show an expected failure as `cmd || echo "exit $?"`). ```console blocks run
  their `$ ` lines the same way.
* A block holding only a foreground `castord start …` is started in the
  background, as in a second terminal; the page goes on once castord says
  READY=1, and castord is drained (SIGTERM, exit 0) when the page ends.
* `<!-- not run: REASON -->` on the line before a block skips it; the reason is
  required. Other languages (text, sql, ini, json, none) are output, diagrams or
  file contents, not samples. Any other language is an error, so a typo in a
  fence cannot hide a sample.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SESSION = Path(__file__).with_name("session.py")

PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell", "console"}
DISPLAY = {"", "text", "sql", "ini", "json", "toml", "yaml", "diff", "systemd"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*(?P<lang>[^\s`]*)")
_MARKER = re.compile(r"^\s*<!--\s*not run\s*:(?P<reason>.*?)-->\s*$")
_FILE = re.compile(r"^#\s+(?P<name>[\w./-]+\.py)\b")


class DocError(Exception):
    """A page breaks the conventions, or one of its samples failed."""


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    not_run: str | None = None  # the marker's reason

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO) if self.page.is_relative_to(REPO) else self.page}:{self.line}"

    @property
    def file_name(self) -> str | None:
        """`main.py` for a python block that starts with `# main.py`."""
        first = self.code.lstrip("\n").split("\n", 1)[0]
        match = _FILE.match(first) if self.lang in PYTHON else None
        return match["name"] if match else None

    @property
    def is_sample(self) -> bool:
        return self.lang in PYTHON or self.lang in SHELL

    def commands(self) -> list[str]:
        """The shell commands, comments and blank lines left out (for recognising them)."""
        lines = self.code.splitlines()
        if self.lang == "console":
            lines = [ln[2:] for ln in lines if ln.startswith("$ ")]
        return [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]

    def script(self) -> str:
        if self.lang == "console":
            return "\n".join(self.commands()) + "\n"
        return self.code

    def foreground_castord(self) -> list[str] | None:
        """argv of a lone foreground `castord start`, else None."""
        commands = self.commands()
        starts = [c for c in commands if _argv(c)[:2] == ["castord", "start"] and "--detach" not in _argv(c)]
        if not starts:
            return None
        if len(commands) != 1:
            raise DocError(f"{self.where}: a foreground `castord start` runs until stopped; "
                           "give it a block of its own")
        return _argv(starts[0])


def _argv(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:
        return []


def parse(page: Path) -> list[Block]:
    """Every fenced block of a page, with its not-run marker; DocError on a broken convention."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    pending: tuple[int, str] | None = None  # a marker waiting for its block
    while i < len(lines):
        line = lines[i]
        marker = _MARKER.match(line)
        if marker:
            reason = marker["reason"].strip()
            if not reason:
                raise DocError(f"{page.name}:{i + 1}: `<!-- not run: -->` needs a reason")
            pending = (i + 1, reason)
            i += 1
            continue
        opening = _FENCE.match(line)
        if not opening:
            if line.strip() and pending is not None:
                raise DocError(f"{page.name}:{pending[0]}: a not-run marker must be right before a code block")
            i += 1
            continue
        indent, fence, lang = opening["indent"], opening["fence"], opening["lang"].lower()
        start = i + 1
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            text = lines[i]
            body.append(text[len(indent):] if text.startswith(indent) else text.lstrip())
            i += 1
        if i == len(lines):
            raise DocError(f"{page.name}:{start}: a code block is never closed")
        block = Block(page, start, lang, "\n".join(body) + "\n", pending[1] if pending else None)
        if lang not in PYTHON | SHELL | DISPLAY:
            raise DocError(f"{block.where}: unknown code block language {lang!r}; samples are python or "
                           "bash, output and diagrams text")
        blocks.append(block)
        pending = None
        i += 1
    if pending is not None:
        raise DocError(f"{page.name}:{pending[0]}: a not-run marker must be right before a code block")
    return blocks


def _env(**extra: str) -> dict[str, str]:
    """The environment samples run in: the venv first on PATH, no castord settings inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASTORD_") and k != "NOTIFY_SOCKET"}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Session:
    """The page's Python process, fed one block at a time."""

    def __init__(self, workdir: Path, harness: Path):
        self.output = harness / "python.out"
        read_fd, write_fd = os.pipe()
        self.replies = os.fdopen(read_fd, "rb", buffering=0)
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(SESSION), str(write_fd)], cwd=workdir, env=_env(),
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
                start_new_session=True,
            )
        os.close(write_fd)
        self._buffer = b""

    def run(self, block: Block, deadline: float, source: str | None = None) -> None:
        assert self.proc.stdin is not None
        request = {"file": str(block.page), "line": block.line, "source": source or block.code}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        answer = self._reply(deadline, block)
        if not answer["ok"]:
            raise DocError(f"{block.where}: the Python sample failed:\n{answer['error']}"
                           f"\n--- its output ---\n{_tail(self.output)}")

    def _reply(self, deadline: float, block: Block) -> dict[str, object]:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DocError(f"{block.where}: the Python sample did not finish in time"
                               f"\n--- its output ---\n{_tail(self.output)}")
            ready, _, _ = select.select([self.replies], [], [], remaining)
            if ready:
                chunk = self.replies.read(65536)
                if not chunk:
                    raise DocError(f"{block.where}: the Python session died (exit {self.proc.wait(5)})"
                                   f"\n--- its output ---\n{_tail(self.output)}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self, timeout: float) -> None:
        """End the session; it must exit by itself, as the reader's script would."""
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise DocError(f"the page's Python did not exit within {timeout:g} s after its last block"
                               f"\n--- its output ---\n{_tail(self.output)}") from None
            if code != 0:
                raise DocError(f"the page's Python exited with {code}\n--- its output ---\n{_tail(self.output)}")
        finally:
            self.replies.close()


class Background:
    """A foreground `castord start` from a page, run as in a second terminal."""

    def __init__(self, argv: list[str], block: Block, workdir: Path, harness: Path, index: int):
        self.block = block
        self.output = harness / f"castord-{index}.out"
        sock_path = str(harness / f"castord-{index}.notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(sock_path)
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "castord"), *argv[1:]], cwd=workdir, env=_env(NOTIFY_SOCKET=sock_path),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_ready(self, deadline: float) -> None:
        while True:
            if self.proc.poll() is not None:
                raise DocError(f"{self.block.where}: castord exited with {self.proc.returncode} before READY=1"
                               f"\n--- its output ---\n{_tail(self.output)}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DocError(f"{self.block.where}: castord sent no READY=1 in time\n{_tail(self.output)}")
            self.sock.settimeout(min(0.2, remaining))
            try:
                if b"READY=1" in self.sock.recv(4096):
                    return
            except TimeoutError:
                continue

    def stop(self, timeout: float) -> None:
        """Drain it (SIGTERM) by the pid we started; a clean drain exits 0."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise DocError(f"{self.block.where}: castord did not drain within {timeout:g} s") from None
            if code != 0:
                raise DocError(f"{self.block.where}: castord exited with {code}\n{_tail(self.output)}")
        finally:
            self.sock.close()


def _run_shell(block: Block, workdir: Path, deadline: float) -> None:
    remaining = max(1.0, deadline - time.monotonic())
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block.script()], cwd=workdir, env=_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=remaining)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group of the shell we started
        output, _ = proc.communicate(timeout=10)
        raise DocError(f"{block.where}: the shell sample did not finish in time\n{output}") from None
    if proc.returncode != 0:
        raise DocError(f"{block.where}: the shell sample exited with {proc.returncode}:\n{block.script()}"
                       f"--- its output ---\n{output}")


def _detached_castords(workdir: Path) -> list[int]:
    """Pids of live castords whose pidfile a page left in its directory."""
    pids = []
    for pidfile in workdir.rglob("*.pid"):
        text = pidfile.read_text().strip()
        if not text.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{text}/cmdline").read_bytes()
        except OSError:
            continue
        if b"castord" in cmdline:
            pids.append(int(text))
    return pids


def _stop_detached(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


@dataclass
class Report:
    ran: list[Block]
    written: list[Block]
    skipped: list[Block]


def run_page(page: Path, workdir: Path, harness: Path, *, seconds: float, check: str | None = None) -> Report:
    """Run every sample of `page` in order in `workdir`; DocError on the first failure.

    `check` is extra Python run in the page's session after its last block (with
    any castord still running), to assert what the samples only show.
    """
    deadline = time.monotonic() + seconds
    blocks = parse(page)
    report = Report([], [], [])
    run = _PageRun(page, workdir, harness)
    try:
        for block in blocks:
            if not block.is_sample:
                continue
            if block.not_run is not None:
                report.skipped.append(block)
            elif block.file_name is not None:
                target = workdir / block.file_name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(block.code)
                report.written.append(block)
            else:
                run.sample(block, deadline)
                report.ran.append(block)
        if check:
            run.python(Block(page.with_name(f"{page.name} [check]"), 0, "python", check), deadline)
        run.finish(deadline)
    except BaseException:
        run.cleanup()
        raise
    return report


class _PageRun:
    """The processes one page starts: its Python session and any castords."""

    def __init__(self, page: Path, workdir: Path, harness: Path):
        self.page, self.workdir, self.harness = page, workdir, harness
        self.session: Session | None = None
        self.daemons: list[Background] = []

    def python(self, block: Block, deadline: float) -> None:
        self.session = self.session or Session(self.workdir, self.harness)
        self.session.run(block, deadline)

    def sample(self, block: Block, deadline: float) -> None:
        if block.lang in PYTHON:
            self.python(block, deadline)
            return
        argv = block.foreground_castord()
        if argv is None:
            _run_shell(block, self.workdir, deadline)
            return
        daemon = Background(argv, block, self.workdir, self.harness, len(self.daemons))
        self.daemons.append(daemon)
        daemon.wait_ready(min(deadline, time.monotonic() + 30))

    def finish(self, deadline: float) -> None:
        """End cleanly: the session exits by itself, each castord drains with exit 0."""
        if self.session is not None:
            session, self.session = self.session, None
            session.close(timeout=max(5.0, min(30.0, deadline - time.monotonic())))
        errors = []
        for daemon in self.daemons:
            try:
                daemon.stop(timeout=30)
            except DocError as exc:
                errors.append(exc)
        self.daemons = []
        self._stop_detached()
        if errors:
            raise errors[0]

    def cleanup(self) -> None:
        """After a failure: stop everything, keeping the first error as the one reported."""
        if self.session is not None:
            try:
                self.session.close(timeout=5)
            except DocError:
                pass
        for daemon in self.daemons:
            try:
                daemon.stop(timeout=30)
            except DocError:
                pass
        self._stop_detached()

    def _stop_detached(self) -> None:
        for pid in _detached_castords(self.workdir):
            _stop_detached(pid, timeout=30)
