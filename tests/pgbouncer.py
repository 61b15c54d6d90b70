"""A real pgbouncer in front of the tests' PostgreSQL (Debian package `pgbouncer`).

`Pgbouncer(server_url)` writes a config in a private temp dir, starts pgbouncer there
(socket only, no TCP port), and stops it by its pid. Every database of the server is
reachable through it under its own name; `url(dbname)` is the URL to it. As root it
runs as the account the tests' server runs as (pgbouncer refuses to run as root), and
it dies with the process that started it (tests/postgres.py does the same).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.postgres import _die_with_parent, import_psycopg, server_account, socket_url
from tests.tools import require_tool

PORT = 6432  # names the socket file only


class Pgbouncer:
    def __init__(self, server_url: str, *, pool_mode: str = "transaction", start_timeout: float = 30.0):
        self.server = import_psycopg().conninfo.conninfo_to_dict(server_url)
        self.pool_mode = pool_mode
        self.start_timeout = start_timeout
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "pgbouncer was not started"
        return self.dir / "pgbouncer.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no pgbouncer log: {exc})"

    def url(self, dbname: str) -> str:
        assert self.dir is not None, "pgbouncer was not started"
        return socket_url(str(self.dir), dbname, user=str(self.server.get("user", "")), port=PORT)

    def __enter__(self) -> Pgbouncer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _config(self) -> str:
        server = " ".join(f"{key}={self.server[key]}" for key in ("host", "port") if self.server.get(key))
        return "\n".join([
            "[databases]",
            f"* = {server}",  # any database name: the server's database of that name
            "[pgbouncer]",
            "listen_addr =",  # no TCP listener
            f"unix_socket_dir = {self.dir}",
            f"listen_port = {PORT}",
            # Clients are not asked for a password; pgbouncer logs in to the server with
            # the one in auth_file (the server URL's, if any).
            "auth_type = trust",
            f"auth_file = {self.dir / 'users.txt'}",
            f"pool_mode = {self.pool_mode}",
            "max_client_conn = 500",
            f"logfile = {self.log_path}",
            "",
        ])

    def start(self) -> None:
        assert self.proc is None, "pgbouncer is already running"
        binary = require_tool("pgbouncer", "apt-get install pgbouncer (.ci/apt-packages lists it)")
        account = server_account()
        self.dir = Path(tempfile.mkdtemp(prefix="castor-pgb-"))
        user, password = self.server.get("user", ""), self.server.get("password", "")
        (self.dir / "users.txt").write_text(f'"{user}" "{password}"\n')
        (self.dir / "pgbouncer.ini").write_text(self._config())
        as_account: dict[str, object] = {}
        if account is not None:
            for path in (self.dir, self.dir / "users.txt", self.dir / "pgbouncer.ini"):
                os.chown(path, account.pw_uid, account.pw_gid)
            as_account = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        os.chmod(self.dir, 0o755)  # the socket must be reachable by the test's own user
        os.chmod(self.dir / "users.txt", 0o600)
        self.proc = subprocess.Popen(
            [binary, str(self.dir / "pgbouncer.ini")], cwd=self.dir, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent, **as_account)  # type: ignore[call-overload]
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        psycopg = import_psycopg()
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited ({self.proc.returncode}) while starting:\n{self.log()}")
            try:
                psycopg.connect(self.url(str(self.server.get("dbname", "postgres"))), connect_timeout=5).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"pgbouncer did not accept connections within {self.start_timeout} s "
                                       f"({exc}):\n{self.log()}") from exc
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGINT (pgbouncer's "safe shutdown": it waits for transactions), then SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
