"""Files castord writes, where an attacker or an accident can reach them.

A link planted where castord writes (pidfile, its sidecar and the sidecar's temp
file, the log file) must never make castord write to the link's target; a
pidfile directory that other users can write to (without the sticky bit), or
that belongs to someone else, is refused with one message and exit 2; a pidfile
that another user could have written is not trusted by `castord stop`; and what
castord creates is owner-only under its --umask, whatever umask it inherits.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.process.test_castord import CASTORD, daemons, run_cli  # noqa: F401 - fixture

NOBODY = 65534  # a uid that is neither root nor the test's user
PRECIOUS = "precious contents, not castord's\n"


def victim(tmp_path: Path) -> Path:
    """A file castord must never write to."""
    path = tmp_path / "victim.txt"
    path.write_text(PRECIOUS)
    return path


def refused(d, code: int = 2) -> str:  # noqa: ANN001 - a tests.process.test_castord.Castord
    """castord exited with `code` on its own; its stderr, which has no traceback."""
    assert d.wait_exit(30) == code
    stderr = d.proc.stderr.read().decode()
    assert "Traceback" not in stderr, stderr
    return stderr


def start_small(d, *extra: str, **kwargs):  # noqa: ANN001, ANN201
    return d.start("--workers", "1", "--threads", "0", *extra, **kwargs)


# -- planted links -------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_links_planted_at_the_sidecar_and_its_temp_file_leave_their_targets_untouched(daemons, app_dir):  # noqa: F811
    target_tmp, target_sidecar = victim(app_dir), app_dir / "other.txt"
    target_sidecar.write_text(PRECIOUS)
    pidfile = app_dir / "castord.pid"
    (app_dir / "castord.pid.json.tmp").symlink_to(target_tmp)
    (app_dir / "castord.pid.json").symlink_to(target_sidecar)
    d = start_small(daemons(), "--pidfile", str(pidfile))
    d.wait_note("READY=1")
    assert target_tmp.read_text() == PRECIOUS and target_sidecar.read_text() == PRECIOUS
    sidecar = app_dir / "castord.pid.json"
    assert not sidecar.is_symlink() and sidecar.is_file()  # the link was replaced, not followed
    status = run_cli(app_dir, "status", "--pidfile", str(pidfile))
    assert status.returncode == 0 and f"pid {d.pid}" in status.stdout, status.stdout + status.stderr
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0
    assert target_tmp.read_text() == PRECIOUS and target_sidecar.read_text() == PRECIOUS


@pytest.mark.timeout(60)
def test_a_link_at_the_pidfile_is_refused_and_left_alone(daemons, app_dir):  # noqa: F811
    target = victim(app_dir)
    pidfile = app_dir / "castord.pid"
    pidfile.symlink_to(target)
    stderr = refused(start_small(daemons(), "--pidfile", str(pidfile)))
    assert f"refusing pidfile {pidfile}: it is a symbolic link" in stderr
    assert pidfile.is_symlink() and target.read_text() == PRECIOUS


@pytest.mark.timeout(60)
def test_a_fifo_at_the_pidfile_is_refused_without_hanging(daemons, app_dir):  # noqa: F811
    pidfile = app_dir / "castord.pid"
    os.mkfifo(pidfile)
    stderr = refused(start_small(daemons(), "--pidfile", str(pidfile)))
    assert f"refusing pidfile {pidfile}: it is not a regular file (a FIFO)" in stderr
    status = run_cli(app_dir, "status", "--pidfile", str(pidfile), timeout=30)
    assert status.returncode == 2 and "it is not a regular file" in status.stderr


@pytest.mark.timeout(60)
def test_a_link_at_the_log_file_is_refused_and_its_target_untouched(daemons, app_dir):  # noqa: F811
    target = victim(app_dir)
    d = daemons()
    d.log_file.symlink_to(target)
    stderr = refused(start_small(d))
    assert f"refusing log file {d.log_file}: it is a symbolic link" in stderr
    assert target.read_text() == PRECIOUS


@pytest.mark.timeout(60)
def test_a_link_planted_after_log_rotation_is_not_followed_on_reopen(daemons, app_dir):  # noqa: F811
    target = victim(app_dir)
    d = start_small(daemons())
    d.wait_note("READY=1")
    rotated = app_dir / "castord.log.1"
    d.log_file.rename(rotated)
    d.log_file.symlink_to(target)
    d.signal(signal.SIGUSR1)
    # The master refuses the link, and says so on the stream it keeps (the rotated file).
    wait_until(lambda: "castord.log_reopen_failed" in rotated.read_text(), 15, "castord to act on SIGUSR1")
    assert target.read_text() == PRECIOUS
    assert "castord.logs_reopened" not in rotated.read_text()


# -- the pidfile's directory ---------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode, says", [
    (0o777, "is writable by other users (mode 0777) without the sticky bit"),
    (0o770, "is writable by other users (mode 0770) without the sticky bit"),
])
def test_a_pidfile_directory_others_can_write_is_refused(daemons, app_dir, mode, says):  # noqa: F811
    run_dir = app_dir / "run"
    run_dir.mkdir()
    run_dir.chmod(mode)
    pidfile = run_dir / "castord.pid"
    stderr = refused(start_small(daemons(), "--pidfile", str(pidfile)))
    assert f"refusing pidfile {pidfile}: its directory {run_dir} {says}" in stderr
    assert list(run_dir.iterdir()) == []


@pytest.mark.timeout(60)
def test_a_pidfile_directory_owned_by_another_user_is_refused(daemons, app_dir):  # noqa: F811
    if os.geteuid() != 0:
        pytest.skip("making a directory owned by another user needs root")
    run_dir = app_dir / "run"
    run_dir.mkdir()
    os.chown(run_dir, NOBODY, NOBODY)
    pidfile = run_dir / "castord.pid"
    stderr = refused(start_small(daemons(), "--pidfile", str(pidfile)))
    assert (f"refusing pidfile {pidfile}: its directory {run_dir} belongs to uid {NOBODY}, "
            f"neither root nor this user (uid {os.geteuid()})") in stderr
    assert list(run_dir.iterdir()) == []


@pytest.mark.timeout(60)
def test_a_sticky_shared_directory_like_tmp_is_accepted(daemons, app_dir):  # noqa: F811
    run_dir = app_dir / "shared"
    run_dir.mkdir()
    run_dir.chmod(0o1777)
    pidfile = run_dir / "castord.pid"
    d = start_small(daemons(), "--pidfile", str(pidfile))
    d.wait_note("READY=1")
    assert pidfile.read_text().strip() == str(d.pid)
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0 and not pidfile.exists()


# -- pidfiles `castord stop` must not trust ------------------------------------------------


@pytest.fixture
def decoy(app_dir: Path):
    """A process of ours that a forged pidfile names; it must survive `castord stop`."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@pytest.mark.timeout(60)
def test_stop_does_not_follow_a_linked_pidfile(app_dir, decoy):
    forged = app_dir / "forged.pid"
    forged.write_text(f"{decoy.pid}\n")
    pidfile = app_dir / "castord.pid"
    pidfile.symlink_to(forged)
    result = run_cli(app_dir, "stop", "--pidfile", str(pidfile), "--timeout", "5", timeout=30)
    assert result.returncode == 2 and f"refusing pidfile {pidfile}: it is a symbolic link" in result.stderr
    assert decoy.poll() is None


@pytest.mark.timeout(60)
def test_stop_does_not_trust_a_pidfile_another_user_wrote_naming_our_process(app_dir, decoy):
    if os.geteuid() != 0:
        pytest.skip("making a file owned by another user needs root")
    pidfile = app_dir / "castord.pid"
    pidfile.write_text(f"{decoy.pid}\n")
    os.chown(pidfile, NOBODY, NOBODY)
    result = run_cli(app_dir, "stop", "--pidfile", str(pidfile), "--timeout", "5", timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert (f"refusing pidfile {pidfile}: it belongs to uid {NOBODY}, but names pid {decoy.pid}, "
            f"which belongs to uid {os.geteuid()}") in result.stderr
    assert decoy.poll() is None


# -- owner-only files -----------------------------------------------------------------------


def modes(*paths: Path) -> dict[str, str]:
    return {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in paths}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("umask_option, allowed", [((), 0o700), (("--umask", "027"), 0o750)])
def test_what_castord_creates_is_owner_only_whatever_umask_it_inherits(
        daemons, app_dir, umask_option, allowed):  # noqa: F811
    fresh = app_dir / "fresh"
    fresh.mkdir()
    db = fresh / "new.db"
    pidfile = fresh / "castord.pid"
    d = daemons()
    previous = os.umask(0o022)  # what castord inherits: files readable by everyone
    try:
        start_small(d, "--pidfile", str(pidfile), *umask_option, env={"CASTOR_TEST_DB": str(db)})
    finally:
        os.umask(previous)
    d.wait_note("READY=1")
    created = [db, Path(f"{db}-wal"), Path(f"{db}-shm"), pidfile, Path(f"{pidfile}.json"), d.log_file]
    wait_until(lambda: all(p.exists() for p in created), 15, "the database's -wal and -shm files")
    found = modes(*created)
    assert all(int(m, 8) & ~allowed == 0 for m in found.values()), found
    # The database is castor's own: created owner-only whatever the umask (sharing it
    # takes a chmod, which castor leaves alone).
    assert all(int(m, 8) & 0o077 == 0 for name, m in found.items() if name.startswith("new.db")), found
    if umask_option:  # the group keeps read permission: the option is applied, not ignored
        assert all(int(m, 8) & 0o040 for name, m in found.items() if not name.startswith("new.db")), found


@pytest.mark.timeout(60)
def test_a_pidfile_naming_pid_0_is_no_castord(app_dir):
    """kill(0, sig) signals the caller's whole process group: "0" must name nobody."""
    pidfile = app_dir / "castord.pid"
    pidfile.write_text("0\n")
    env = {**os.environ, "PYTHONPATH": str(app_dir)}
    for command, code in (("status", 3), ("stop", 0)):
        result = subprocess.run([CASTORD, command, "--pidfile", str(pidfile)], cwd=app_dir, env=env,
                                capture_output=True, text=True, timeout=30,
                                start_new_session=True)  # its own group: all it could kill is itself
        assert result.returncode == code and "castord is not running" in result.stdout, result


@pytest.mark.timeout(60)
def test_status_does_not_open_a_database_named_by_another_users_sidecar(app_dir):
    """A pidfile and sidecar another user wrote (naming their own process) must not make
    `castord status` open, and so migrate, a database that user does not own."""
    if os.geteuid() != 0:
        pytest.skip("files and a process of another user need root")
    theirs = subprocess.Popen(["sleep", "60"], user=NOBODY, start_new_session=True)
    try:
        ours = app_dir / "ours.db"
        conn = sqlite3.connect(ours)
        conn.execute("CREATE TABLE mine (n INTEGER)")
        conn.close()
        before = ours.read_bytes()
        pidfile = app_dir / "castord.pid"
        pidfile.write_text(f"{theirs.pid}\n")
        Path(f"{pidfile}.json").write_text(json.dumps({"pid": theirs.pid, "app": "x:y", "db_path": str(ours)}))
        for path in (pidfile, Path(f"{pidfile}.json")):
            os.chown(path, NOBODY, NOBODY)
        result = run_cli(app_dir, "status", "--pidfile", str(pidfile), "--json", timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["running"] and "database" not in report
        assert any(f"the sidecar's owner (uid {NOBODY}) does not own it (uid 0)" in w for w in report["warnings"]), report
        assert ours.read_bytes() == before and not Path(f"{ours}-wal").exists()
    finally:
        theirs.kill()
        theirs.wait(timeout=10)
