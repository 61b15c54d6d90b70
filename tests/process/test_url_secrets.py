"""A store URL's password never shows: castord on a PostgreSQL URL that carries one, in
its userinfo and as `password=`, and everything it and its tools print, log or export.

The test's throwaway server trusts its socket's owner, so any password is accepted; with
CASTOR_TEST_POSTGRES_URL carrying a real one, that one is the secret looked for.
"""

from __future__ import annotations

import json
import signal
import stat
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from tests.process.test_castord import Castord, run_cli
from tests.process.test_fleet_status import fleet_app  # noqa: F401 - fixture
from tests.process.test_metrics import scrape_text
from tests.process.test_postgresql_castord import pg_app  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(180)


def with_password(url: str) -> tuple[str, str]:
    """`url` with a password in its userinfo and its query; and that password."""
    parts = urlsplit(url)
    secret = parts.password or f"s3cret-{uuid.uuid4().hex[:8]}"
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    query = f"{parts.query}&password={quote(secret)}" if parts.query else f"password={quote(secret)}"
    return urlunsplit((parts.scheme, f"{user}:{quote(secret)}@{host}", parts.path, query, "")), secret


@pytest.fixture
def secret_app(fleet_app: Any, postgres_db_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:  # noqa: F811
    """The fleet app, and the secret of the URL its castords and tools open (in PGAPP_URL)."""
    url, secret = with_password(postgres_db_url)
    monkeypatch.setenv("PGAPP_URL", url)
    return fleet_app, secret


def cli(app_dir: Path, seen: list[str], *args: str, code: int = 0) -> str:
    out = run_cli(app_dir, *args)
    seen += [out.stdout, out.stderr]
    assert out.returncode == code, out
    return out.stdout


def titles(pids: list[int]) -> list[str]:
    found = []
    for pid in pids:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            found.append(f.read().decode(errors="replace"))
    return found


def test_no_output_log_line_title_or_metric_of_castord_carries_the_password(secret_app, app_dir, tmp_path):
    app, secret = secret_app
    seen: list[str] = []
    pidfile = tmp_path / "castord.pid"
    d = Castord(app_dir, "castord")
    try:
        d.start("--workers", "1", "--threads", "1", "--pidfile", str(pidfile), "--metrics-port", "0",
                "--log-level", "debug", app="fleetapp:manager")
        d.wait_note("READY=1", timeout=30)
        port = d.wait_event("metrics.serving")[0]["port"]
        done = app.add.delay(1, 2)
        assert done.join(timeout=30) == 3
        with pytest.raises(ValueError):
            app.boom.delay().join(timeout=30)

        by_pidfile = json.loads(cli(app_dir, seen, "status", "--pidfile", str(pidfile), "--json"))
        assert ":***@" in by_pidfile["database"] and "password=***" in by_pidfile["database"]
        by_app = json.loads(cli(app_dir, seen, "status", "fleetapp:manager", "--json"))
        assert by_app["running"] and by_app["database"] == by_pidfile["database"]
        cli(app_dir, seen, "status", "--pidfile", str(pidfile))
        cli(app_dir, seen, "status", "fleetapp:manager")
        for args in (("stats",), ("list",), ("show", done.id)):
            cli(app_dir, seen, "tasks", args[0], "fleetapp:manager", *args[1:], "--json")
        missing = cli(app_dir, seen, "tasks", "show", "fleetapp:manager", "no-such-id", code=5)
        assert missing == "" and ":***@" in seen[-1]
        seen.append(scrape_text(port))
        children = [c["pid"] for c in by_app["children"]]
        seen += titles([d.pid, *children])
        # The sidecar beside the pidfile keeps the URL (status --pidfile opens the store
        # from it): owner-only, as castord's umask makes it.
        sidecar = Path(f"{pidfile}.json")
        assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600

        d.signal(signal.SIGTERM)
        assert d.wait_exit() == 0
        assert d.proc is not None and d.proc.stdout is not None and d.proc.stderr is not None
        seen += [d.proc.stdout.read().decode(), d.proc.stderr.read().decode(), d.log_file.read_text()]
        assert any(e["event"] == "castord.starting" and ":***@" in e["database"] for e in d.events())
    finally:
        d.stop()
    assert len(seen) > 20
    leaks = [text for text in seen if secret in text]
    assert leaks == []


def test_a_url_libpq_cannot_read_is_refused_without_its_password(app_dir):
    secret = f"s3cret%zz{uuid.uuid4().hex[:6]}"  # an invalid percent-escape: libpq quotes it
    (app_dir / "badapp.py").write_text(
        f"import castor\nmanager = castor.Manager({f'postgresql://app:{secret}@db/tasks'!r})\n")
    d = Castord(app_dir, "bad")
    try:
        d.start(app="badapp:manager")
        assert d.wait_exit() == 3
        assert d.proc is not None and d.proc.stdout is not None and d.proc.stderr is not None
        out = d.proc.stdout.read().decode() + d.proc.stderr.read().decode() + d.log_file.read_text()
        assert 'not a usable PostgreSQL URL (invalid percent-encoded token: "***")' in out
        assert secret not in out
    finally:
        d.stop()
