"""Option values `castord start` (and `castor`) must refuse, and the ones they must take.

A value that passes validation gets as far as loading APP, so a missing module
(exit 3) proves an option was accepted without running a daemon; a refused one
exits 2 first. The refusals themselves are rows of tests/process/test_bad_input.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from castord import supervisor
from castord.config import CHILD_KILL_GRACE_SECONDS, Config, minimum_lease
from tests.process.test_bad_input import run

CASTORD = str(Path(sys.executable).parent / "castord")
CASTOR = str(Path(sys.executable).parent / "castor")
NO_APP = "nosuchmodule:manager"


def outcome(result: subprocess.CompletedProcess[str]) -> int:
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode


def test_the_minimum_lease_counts_the_masters_kill_grace():
    assert CHILD_KILL_GRACE_SECONDS == supervisor.KILL_GRACE_SECONDS
    assert minimum_lease(heartbeat_timeout=10, heartbeat_interval=1) == 19.5
    assert minimum_lease(heartbeat_timeout=3, heartbeat_interval=0.5) == 8.25
    Config(app="a:m", workers=1, threads=1)  # the defaults pass: 30 s >= 19.5 s
    Config(app="a:m", workers=1, threads=1, lease=19.5)
    with pytest.raises(ValueError, match=r"^--lease \(19.4 s\) must be at least 19.5 s "):
        Config(app="a:m", workers=1, threads=1, lease=19.4)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("argv, code", [
    (["--lease", "19.5"], 3),  # exactly the minimum for the default heartbeats
    (["--lease", "19.4"], 2),
    (["--lease", "6", "--heartbeat-interval", "0.5", "--heartbeat-timeout", "1.5"], 3),
    (["--lease", "30", "--heartbeat-timeout", "30"], 2),  # a longer timeout needs a longer lease
    (["--umask", "027"], 3),
    (["--umask", "0o007"], 3),
    (["--umask", "0077"], 3),
])
def test_castord_start_takes_or_refuses(tmp_path, argv, code):
    assert outcome(run(tmp_path, CASTORD, "start", NO_APP, "--workers", "1", *argv)) == code


@pytest.mark.timeout(60)
def test_the_environment_and_the_castor_command_check_the_lease_too(tmp_path):
    message = "--lease (2 s) must be at least 19.5 s with --heartbeat-timeout 10 s and --heartbeat-interval 1 s"
    result = run(tmp_path, CASTORD, "start", NO_APP, env={"CASTORD_LEASE": "2"})
    assert outcome(result) == 2 and message in result.stderr
    result = run(tmp_path, CASTOR, "--no-dashboard", "--lease", "2", NO_APP)
    assert outcome(result) == 2 and message in result.stderr
    result = run(tmp_path, CASTORD, "start", NO_APP, "--workers", "1", env={"CASTORD_UMASK": "022"})
    assert outcome(result) == 3
    result = run(tmp_path, CASTORD, "start", NO_APP, "--workers", "1", env={"CASTORD_UMASK": "99"})
    assert outcome(result) == 2 and "--umask must be an octal number" in result.stderr


@pytest.mark.timeout(60)
def test_detach_without_a_log_file_warns_that_the_log_goes_nowhere(tmp_path):
    result = run(tmp_path, CASTORD, "start", NO_APP, "--detach", "--pidfile", str(tmp_path / "x.pid"))
    assert outcome(result) == 3
    assert ("castord: warning: --detach without --log-file: the detached castord's log goes to "
            "/dev/null; give --log-file") in result.stderr
