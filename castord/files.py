"""The files castord writes (pidfile, its sidecar, the log), opened so that neither an
attacker nor an accident can redirect them.

* Never through a link: the last component is opened with O_NOFOLLOW, and what is
  there must be a regular file with one name (a link planted at a pidfile or log
  path, perhaps pointing at /etc/passwd, is refused rather than written through).
* Never a fixed temporary name: a file replaced atomically is written to a new file
  with a random name, created exclusively (O_EXCL), then renamed over the old one.
* Never in a directory someone else could swap the file in: see check_directory().

Permissions come from the process umask, which castord sets at start (--umask).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import IO

from castord.errors import CastordError, ExitCode

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted at the path must fail or return at once, not
# wait for a writer; it changes nothing for a regular file.
_READ = os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symbolic link"}


class UnsafePathError(CastordError):
    """A path castord will not write (or trust): a usage problem, exit 2."""

    exit_code = ExitCode.USAGE


def check_directory(directory: str, what: str, path: str) -> None:
    """Refuse a directory where another user could replace `path` (the pidfile): one
    writable by group or others without the sticky bit, or one owned by neither
    root nor us (its owner may do anything there). FileNotFoundError passes through."""
    st = os.stat(directory)
    uid = os.geteuid()
    if st.st_uid not in (0, uid):
        raise UnsafePathError(
            f"refusing {what} {path}: its directory {directory} belongs to uid {st.st_uid}, "
            f"neither root nor this user (uid {uid}), so its owner could replace the {what}; "
            "use a directory owned by you or by root")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise UnsafePathError(
            f"refusing {what} {path}: its directory {directory} is writable by other users "
            f"(mode {stat.S_IMODE(st.st_mode):04o}) without the sticky bit, so any of them could "
            f"replace the {what}; use a directory only its owner can write (such as /run/castord, "
            "or RuntimeDirectory= under systemd)")


def _refuse_link(exc: OSError, what: str, path: str) -> None:
    """O_NOFOLLOW met a link (ELOOP): say so instead of "too many levels of links"."""
    if exc.errno == errno.ELOOP:
        raise UnsafePathError(
            f"refusing {what} {path}: it is a symbolic link, and castord does not write or trust "
            "files through links (one could point it at any file); remove it, or give the real path"
        ) from None


def _check_regular(fd: int, what: str, path: str, *, single_link: bool,
                   devices: bool = False) -> os.stat_result:
    st = os.fstat(fd)
    if devices and stat.S_ISCHR(st.st_mode):
        return st  # /dev/null, a console: only root makes device nodes
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a file")
        raise UnsafePathError(f"refusing {what} {path}: it is not a regular file ({kind}); "
                              "remove it, or give another path")
    if single_link and st.st_nlink > 1:
        os.close(fd)
        raise UnsafePathError(
            f"refusing {what} {path}: it has {st.st_nlink} hard links, so writing to it would change "
            "another file too; remove it, or give another path")
    return st


def read_regular(path: str, what: str) -> tuple[str, os.stat_result]:
    """The text of a regular file and its stat, never through a link; FileNotFoundError
    if there is nothing there, UnsafePathError if something other than a file is."""
    try:
        fd = os.open(path, _READ)
    except OSError as exc:
        _refuse_link(exc, what, path)
        raise
    st = _check_regular(fd, what, path, single_link=False)
    with os.fdopen(fd, "rb") as f:
        return f.read(65536).decode(errors="replace"), st


def open_append(path: str, what: str = "log file") -> IO[str]:
    """A line-buffered text stream appending to `path` (created if missing), which must
    be a regular file with a single name, or a character device such as /dev/null;
    not a link, a FIFO, a socket or a directory."""
    try:
        fd = os.open(path, _APPEND, 0o666)
    except OSError as exc:
        _refuse_link(exc, what, path)
        raise
    _check_regular(fd, what, path, single_link=True, devices=True)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", buffering=1)


def _create_temp(path: str, mode: int) -> tuple[int, str]:
    """A new file beside `path` with a random name, created exclusively."""
    directory, name = os.path.split(path)
    for _ in range(100):
        temp = os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(temp, _CREATE, mode), temp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", path)


def _write_temp(path: str, data: bytes, mode: int) -> str:
    fd, temp = _create_temp(path, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        os.unlink(temp)
        raise
    return temp


def replace_atomically(path: str, data: bytes, mode: int = 0o644) -> None:
    """Make `path` hold `data`: written to a fresh temporary file, renamed over it. A
    link at `path` is replaced, never followed; readers see the old or the new file."""
    temp = _write_temp(path, data, mode)
    try:
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def create_exclusively(path: str, data: bytes, mode: int = 0o644) -> None:
    """Create `path` holding `data`, or raise FileExistsError if anything (a link
    included) is there. Readers never see it empty: it is written under a temporary
    name first and then linked into place, which fails if the name is taken."""
    temp = _write_temp(path, data, mode)
    try:
        os.link(temp, path, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: create in place (O_EXCL still holds)
        with os.fdopen(os.open(path, _CREATE, mode), "wb") as f:
            f.write(data)
    finally:
        os.unlink(temp)
