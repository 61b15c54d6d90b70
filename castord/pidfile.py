"""The pidfile: created atomically and exclusively; a stale one (dead pid) is replaced.

It is written and read only as a regular file, never through a link, in a directory
no other user can replace it in (castord/files.py); and a pidfile that another user
could have written is trusted only to name that user's own processes, so `castord
stop` never signals a process on a forger's behalf.
"""

from __future__ import annotations

import errno
import os

from castord.errors import CastordError, PidfileError
from castord.files import UnsafePathError, check_directory, create_exclusively, read_regular


def read_pid(path: str) -> int | None:
    """The pid in the file, or None if there is no readable pid there.

    Raises UnsafePathError for a link or something other than a file at `path`, or
    for a pidfile owned by another user that names a process not theirs."""
    try:
        text, st = read_regular(path, "pidfile")
    except FileNotFoundError:
        return None
    except UnsafePathError:
        raise
    except OSError as exc:
        raise PidfileError(f"cannot read pidfile {path}: {exc.strerror}") from exc
    text = text.strip()
    # 0 is no pid: kill(0, ...) would signal our own process group.
    if not text.isdigit() or int(text) <= 0:
        return None
    pid = int(text)
    _check_trusted(path, st, pid)
    return pid


def _check_trusted(path: str, st: os.stat_result, pid: int) -> None:
    if st.st_uid in (0, os.geteuid()):
        return
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return  # no such process: nothing will be signalled
    if owner != st.st_uid:
        raise UnsafePathError(
            f"refusing pidfile {path}: it belongs to uid {st.st_uid}, but names pid {pid}, which "
            f"belongs to uid {owner}; whoever wrote it could have castord signal a process that is "
            "not theirs. Remove it if no castord runs with it")


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

    def check_directory(self) -> None:
        """Refuse a directory where another user could replace the pidfile (exit 2)."""
        try:
            check_directory(os.path.dirname(self.path), "pidfile", self.path)
        except FileNotFoundError as exc:
            raise PidfileError(f"cannot create pidfile {self.path}: {exc.strerror}") from exc

    def acquire(self) -> None:
        """Write our pid, or raise PidfileError if a live process holds the file
        (UnsafePathError if the path or its directory is unsafe)."""
        self.check_directory()
        for _ in range(3):
            try:
                create_exclusively(self.path, f"{os.getpid()}\n".encode())
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
        try:
            if self._owned and read_pid(self.path) == os.getpid():
                os.unlink(self.path)
        except (CastordError, OSError):
            pass  # replaced by something else meanwhile: leave it be
        self._owned = False
