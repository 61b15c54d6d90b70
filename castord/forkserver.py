"""The fork server castord's children come from.

The master may not fork its children itself: loading APP usually opens a
BeaverDB, whose threads an inherited copy would wait on forever. Children come
from `multiprocess`'s fork server instead: a single-threaded process that has
imported what every child needs and forks each child from there; a child then
only imports APP itself.

How it starts, and why (docs/benchmarks.md, "Start-up", has the figures).
multiprocess starts a fork server as a new interpreter, which imports castor,
structlog, click and beaver-db all over again (~0.3 s of CPU on a small
machine), plus a resource tracker (one more interpreter), and castord asked for
one only once APP was loaded, so the first child waited for both in turn.
Instead:

1. castord imports what it shares with its children (SHARED: it supervises
   with castor and logs with structlog anyway), then *forks* the fork server
   from itself, first thing, before it loads APP. At that moment the master has
   no thread and has opened nothing (no database, no log file; the fork server
   puts back the default signal actions the master replaced, and closes every
   file descriptor but its own): the copy is as clean as a new interpreter, and
   it already holds all of SHARED. The fork server is still multiprocess's own
   (its main loop and protocol); only how it is launched differs.
2. The fork server then waits for word from the master about what APP needs
   beyond SHARED (HINTED): beaver-db (~0.15 s to import, and numpy's first
   thread with it) and the PostgreSQL store (psycopg and libpq, ~0.1 s). If
   loading APP imports one (APP built its Manager on a BeaverDB, as most do, or
   on a postgresql:// URL), the master's import says so at once, and the fork
   server imports it too, beside the master, so that no child imports it again
   (nor does each replacement of a crashed child). Once APP is loaded the
   master closes the pipe, and the fork server serves with what it was told:
   the master never needs beaver to supervise, and nor do children of an APP
   without it.

Where the master has a thread before the fork (something imported at start-up
started one), castord falls back to multiprocess's new interpreter, with
beaver-db preloaded as before. Importing beaver-db in the master before the fork
would be such a thread (numpy's OpenBLAS starts one), which is one more reason
the fork server imports it on its own. (In the fork server, OpenBLAS shuts its
thread down before each fork and starts it again only when next used: children
are forked with no other thread, as they were before.)
"""

from __future__ import annotations

import importlib
import importlib.abc
import os
import select
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

import multiprocess
import multiprocess.forkserver
from multiprocess import connection, resource_tracker

from castord.signals import MASTER_SIGNALS

# What the master imports anyway and its children need: imported before the fork
# server is forked, so that it inherits them.
SHARED = [
    # multiprocess runs castord's own script again in each child as __mp_main__
    # (it names the main module by path) unless the child's __main__ is that
    # script already, as a forked fork server's is; a new interpreter imports
    # its modules here so that the run costs nothing.
    "castord.cli",
    "castor",
    "castor.worker",
    # What Manager(...) opens (castor.store.open_store imports it lazily).
    "castor.store.sqlite",
    "castord.children",
    "castord.logging",
    "structlog",
]
# Imported by the fork server when APP needs them (see above), each named by one
# byte on the hint pipe; a new interpreter (the fallback) always imports beaver.
BEAVER = "beaver"
POSTGRESQL_STORE = "castor.store.postgresql"
HINTED = {BEAVER: b"b", POSTGRESQL_STORE: b"p"}
PRELOAD = [*SHARED, BEAVER]

TITLE = "castord: fork server"

_hint: _ImportHint | None = None


def context() -> Any:
    """The forkserver context children are started from (one fork server per master)."""
    ctx = multiprocess.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start() -> None:
    """Start the fork server now, without waiting for it. Call it before anything
    opens a file or starts a thread (castord's signal handlers may be in place: the
    fork server resets them), then app_loaded() once APP is; the first child's
    start finds it running."""
    global _hint
    context()
    for name in SHARED:
        importlib.import_module(name)
    _without_resource_tracker()
    server = multiprocess.forkserver._forkserver  # noqa: SLF001 - see _launch
    if _single_threaded() and server._forkserver_pid is None:  # noqa: SLF001
        hint_r, hint_w = os.pipe()
        try:
            _launch(server, hint_r)
        except BaseException:
            os.close(hint_w)
            raise
        finally:
            os.close(hint_r)
        _hint = _ImportHint(hint_w)
        sys.meta_path.insert(0, _hint)
    multiprocess.forkserver.ensure_running()  # the fork server we forked, or a new interpreter


def app_loaded() -> None:
    """APP is loaded: what it did not import, the fork server need not."""
    global _hint
    if _hint is not None:
        _hint.close()
        _hint = None


def stop() -> None:
    """Stop the fork server and reap it, as castord exits (its children are gone by
    then). Left alone it would end a moment later, having seen the master's end of
    its pipe close, or only once its imports end if castord gave up starting; a
    kill does not wait for either, nor for a fork server someone SIGSTOPped."""
    app_loaded()
    server = multiprocess.forkserver._forkserver  # noqa: SLF001 - no public stop
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        server._stop()  # noqa: SLF001 - closes its pipe, reaps it, removes its socket
    except OSError:
        pass


class _ImportHint(importlib.abc.MetaPathFinder):
    """First on sys.meta_path in the master until APP is loaded: the moment anything
    imports a module of HINTED, it tells the fork server to import it too. It finds
    nothing itself: the import goes on as usual."""

    def __init__(self, fd: int):
        self.fd: int | None = fd
        self.told: set[str] = set()

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: Any = None) -> None:
        word = HINTED.get(fullname)
        if word is not None and fullname not in self.told and self.fd is not None:
            self.told.add(fullname)
            try:
                os.write(self.fd, word)
            except OSError:  # the fork server is gone: the first child's start says so
                self.close()
        return None

    def close(self) -> None:
        """APP is loaded: end of file tells the fork server to serve."""
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def _without_resource_tracker() -> None:
    """multiprocess starts a resource tracker (one more interpreter, ~50 ms of CPU
    in the middle of the start) to unlink the named semaphores and shared memory
    that its processes leave behind. castord creates neither, and each child
    closes its copy of the tracker's pipe at once (castord/children.py), so task
    code that needs a tracker starts its own. castord hands the fork server
    /dev/null for that pipe instead: what the tracker's protocol writes there
    (a probe per child started) goes nowhere, and nothing waits on it."""
    tracker = resource_tracker._resource_tracker  # noqa: SLF001 - no public way to decline one
    if tracker._fd is None:  # noqa: SLF001
        tracker._fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)  # noqa: SLF001


def _single_threaded() -> bool:
    if threading.active_count() != 1:
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1  # threads of C libraries count too
    except OSError:
        return False  # no /proc: cannot tell


def _launch(server: Any, hint_r: int) -> None:
    """What multiprocess's ForkServer.ensure_running does, with a fork for its
    fork and exec (it records the same three things, so that connecting to the
    fork server, and stopping it, work as they would). Not under the server's
    lock: the fork server and its children would inherit it held, and nothing
    else runs here (single-threaded)."""
    sys.stdout.flush()  # else the fork server would write the master's buffered output again
    sys.stderr.flush()
    with socket.socket(socket.AF_UNIX) as listener:
        address = connection.arbitrary_address("AF_UNIX")
        listener.bind(address)
        os.chmod(address, 0o600)
        listener.listen()
        alive_r, alive_w = os.pipe()
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the fork server; it never returns
                _serve(listener.fileno(), alive_r, hint_r)
        except BaseException:
            os.close(alive_w)
            raise
        finally:
            os.close(alive_r)
    server._forkserver_address = address  # noqa: SLF001
    server._forkserver_alive_fd = alive_w  # noqa: SLF001
    server._forkserver_pid = pid  # noqa: SLF001


def _take_hints(hint_r: int, listener_fd: int, alive_r: int) -> None:
    """Import each module the master names, until end of file (APP is loaded). A fork
    request or the master's exit also ends the wait: a child that needs what was
    not imported yet imports it itself."""
    modules = {word: name for name, word in HINTED.items()}
    while True:
        ready, _, _ = select.select([hint_r, listener_fd, alive_r], [], [])
        if hint_r not in ready:
            return
        words = os.read(hint_r, 16)
        if not words:
            return
        for word in words:
            name = modules.get(bytes([word]))
            if name is None:
                continue
            try:
                importlib.import_module(name)
            except ImportError:  # as multiprocess's own preload: the child will say why
                pass


def _serve(listener_fd: int, alive_r: int, hint_r: int) -> None:
    """In the forked fork server: keep only its socket, its ends of the master's
    "alive" and hint pipes and the standard streams (a copy of the master's end
    of a pipe would keep it open forever: of "alive", this process itself; of
    `start --detach`'s, that command), take the master's word about what APP imports (HINTED), then
    run multiprocess's fork server loop."""
    code = 0
    try:
        # The master's signal handlers only record for its loop, through its wake-up
        # socket (closed below): the defaults, as in a new interpreter. But a
        # terminal's Ctrl+C reaches the whole process group: the master decides.
        signal.set_wakeup_fd(-1)
        for signum in MASTER_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _close_all_but(listener_fd, alive_r, hint_r)
        tracker = resource_tracker._resource_tracker  # noqa: SLF001 - its /dev/null was closed above
        tracker._fd = tracker._pid = None  # noqa: SLF001 - children get the master's (see start)
        from setproctitle import setproctitle

        setproctitle(TITLE)
        _take_hints(hint_r, listener_fd, alive_r)
        os.close(hint_r)
        multiprocess.forkserver.main(listener_fd, alive_r, SHARED, sys_path=list(sys.path))
    except SystemExit as exc:  # the master is gone: main() ends so
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:  # noqa: BLE001 - say why, but never return into castord's code
        code = 1
        try:
            sys.excepthook(*sys.exc_info())
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def _close_all_but(*keep: int) -> None:
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
