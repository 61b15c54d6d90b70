"""What systemd is told (NOTIFY_SOCKET bound by the test): STATUS only from READY
on, and totals that survive a reload (issue 13, systemd)."""

from __future__ import annotations

import re
import signal

import pytest

from tests.conftest import wait_until
from tests.process.test_castord import Castord


@pytest.fixture
def castord(app_dir):
    d = Castord(app_dir)
    yield d
    d.stop()


def done_count(note: str) -> int:
    match = re.search(r"STATUS=[^\n]*?(\d+) done", note)
    assert match, note
    return int(match.group(1))


@pytest.mark.timeout(60)
def test_no_status_before_ready(castord):
    castord.start("--workers", "2", "--threads", "2")
    first_status = castord.wait_note("STATUS=")
    assert "READY=1" in first_status, castord.notes
    assert castord.notes.index(first_status) == next(i for i, n in enumerate(castord.notes) if "READY=1" in n)
    assert re.search(r"STATUS=running: 3 children, \d+ tasks running, 0 done", first_status), first_status


@pytest.mark.timeout(90)
def test_the_done_count_survives_a_reload(castord):
    import testapp

    castord.start("--workers", "1", "--threads", "1", "--heartbeat-interval", "0.2", "--heartbeat-timeout", "5")
    castord.wait_note("READY=1")
    tasks = [testapp.add.delay(i, i) for i in range(5)] + [testapp.tadd.delay(i, i) for i in range(5)]
    for task in tasks:
        task.join(timeout=20)

    def status_with_all_done() -> bool:
        note = castord.wait_note("STATUS=running", timeout=20, after=len(castord.notes))
        return done_count(note) >= 10

    wait_until(status_with_all_done, 40, "a STATUS saying 10 done")
    castord.signal(signal.SIGHUP)
    castord.wait_event("castord.reloaded")
    after = castord.wait_note("STATUS=running", timeout=20, after=len(castord.notes))
    assert done_count(after) >= 10, after
