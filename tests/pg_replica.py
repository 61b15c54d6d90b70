"""A streaming replica of a ThrowawayServer, for failover tests.

`Replica(primary)` makes its data dir with `pg_basebackup -R` from the primary's socket
(so it starts as a hot standby that follows the primary), in its own temp dir with its
own socket; `promote()` makes it a primary. `make_synchronous(primary)` has the primary
wait for the standby's flush before a commit returns, so that what was committed there
is on the replica too when the primary dies.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from tests.postgres import PORT, SUPERUSER, PostgresFailed, ThrowawayServer, import_psycopg


class Replica(ThrowawayServer):
    def __init__(self, primary: ThrowawayServer, **kwargs: object):
        super().__init__(fsync=True, settings=dict(primary.settings), **kwargs)  # type: ignore[arg-type]
        self.primary = primary

    def _make_data_dir(self, bindir: Path, env: dict[str, str], as_account: dict[str, object],
                       account: object = None) -> None:
        backup = subprocess.run(
            [str(bindir / "pg_basebackup"), "-D", str(self.data_dir), "-R", "-X", "stream", "--no-sync",
             "-h", self.primary.socket_dir, "-p", str(PORT), "-U", SUPERUSER],
            cwd=self.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=self.start_timeout, **as_account)  # type: ignore[call-overload]
        if backup.returncode != 0:
            raise PostgresFailed(f"pg_basebackup failed ({backup.returncode}):\n"
                                 f"{backup.stdout.decode(errors='replace')}")

    def in_recovery(self) -> bool:
        with import_psycopg().connect(self.url(), autocommit=True) as conn:
            return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])

    def promote(self, timeout: float = 60.0) -> None:
        with import_psycopg().connect(self.url(), autocommit=True) as conn:
            if not conn.execute("SELECT pg_promote(true, %s)", (int(timeout),)).fetchone()[0]:
                raise PostgresFailed(f"the replica was not promoted within {timeout} s:\n{self.log_tail()}")


def make_synchronous(primary: ThrowawayServer, timeout: float = 60.0) -> None:
    """Commits on `primary` wait for a standby's flush from now on (its standby must be
    streaming: this waits until one is)."""
    psycopg = import_psycopg()
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while not conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone()[0]:
            if time.monotonic() >= deadline:
                raise PostgresFailed(f"no standby streams from the primary after {timeout} s")
            time.sleep(0.05)
        conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        conn.execute("SELECT pg_reload_conf()")
        while conn.execute("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone()[0] == 0:
            if time.monotonic() >= deadline:
                raise PostgresFailed(f"the standby did not become synchronous within {timeout} s")
            time.sleep(0.05)


def failover_url(*servers: ThrowawayServer, dbname: str = "postgres") -> str:
    """One libpq URL naming every server, that connects only to the one taking writes
    (target_session_attrs=read-write): the same URL before and after a failover."""
    query = urlencode({"host": ",".join(s.socket_dir for s in servers), "port": ",".join([str(PORT)] * len(servers)),
                       "target_session_attrs": "read-write"}, safe="/,")
    return f"postgresql://{quote(SUPERUSER)}@/{quote(dbname)}?{query}"
