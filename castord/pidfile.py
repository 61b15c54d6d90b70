"""The pidfile: created atomically and exclusively; a stale one (dead pid) is replaced."""

from __future__ import annotations

import errno
import os

from castord.errors import PidfileError


def read_pid(path: str) -> int | None:
    """The pid in the file, or None if there is no readable pid there."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PidfileError(f"cannot read pidfile {path}: {exc}") from exc
    return int(text) if text.isdigit() else None


def pid_alive(pid: int) -> bool:
    """True if `pid` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Pidfile:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self._owned = False

    def acquire(self) -> None:
        """Write our pid, or raise PidfileError if a live process holds the file."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid = read_pid(self.path)
                if pid is not None and pid != os.getpid() and pid_alive(pid):
                    raise PidfileError(
                        f"castord is already running with pid {pid} (pidfile {self.path}); "
                        "stop it first, or give this one another --pidfile"
                    ) from None
                self._remove_stale(pid)
                continue
            except OSError as exc:
                raise PidfileError(f"cannot create pidfile {self.path}: {exc.strerror}") from exc
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self._owned = True
            return
        raise PidfileError(f"could not take pidfile {self.path}: another process keeps recreating it")

    def _remove_stale(self, pid: int | None) -> None:
        # Only remove the file if it still names the dead pid we looked at.
        if read_pid(self.path) != pid:
            return
        try:
            os.unlink(self.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise PidfileError(f"cannot replace stale pidfile {self.path}: {exc.strerror}") from exc

    def release(self) -> None:
        if self._owned and read_pid(self.path) == os.getpid():
            os.unlink(self.path)
        self._owned = False
