"""A rate limit holds across a fleet: two castords drain one task name limited to 20/s
(burst 5) for about 10 s, and the tasks' recorded start times never put more than
20 + 5 in any 1 s window. On the beaver file (two castords on one host) and on PostgreSQL.

What is asserted is what happened (start times, who ran what), never how fast."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from castor.store import Query
from tests.conftest import wait_until
from tests.process.test_castord import daemons, run_cli  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(180)

RATE, BURST, TASKS = 20, 5, 200  # 200 tasks at 20/s: about 10 s

APP = f'''
import os
import castor

manager = castor.Manager(os.environ["CASTOR_TEST_DB"])

@manager.task(mode="process", name="paced", rate_limit="{RATE}/s", rate_burst={BURST})
def paced(n):
    return os.environ["CASTOR_TEST_WHO"]
'''


def _drain_at_the_limit(daemons, app_dir):  # noqa: F811
    (app_dir / "rateapp.py").write_text(textwrap.dedent(APP))
    sys.modules.pop("rateapp", None)
    import rateapp

    try:
        fleet = [daemons(who).start("--workers", "2", "--threads", "0", "--pidfile", str(app_dir / f"{who}.pid"),
                                    app="rateapp:manager", env={"CASTOR_TEST_WHO": who})
                 for who in ("east", "west")]
        for d in fleet:
            d.wait_note("READY=1", timeout=60)
        handles = [rateapp.paced.delay(i) for i in range(TASKS)]
        wait_until(lambda: rateapp.manager.count("success") == TASKS, 120, "the paced tasks to drain")
        results = [h.join(timeout=10) for h in handles]
        records = rateapp.manager.store.list(Query(name="paced"))
        assert len(records) == TASKS and all(r.attempts == 1 for r in records)  # none failed or ran twice
        started = sorted(r.started_at for r in records if r.started_at is not None)
        assert len(started) == TASKS
        busiest = max(sum(1 for s in started[i:] if s < t + 1.0) for i, t in enumerate(started))
        assert busiest <= RATE + BURST, f"{busiest} tasks started within 1 s"
        assert set(results) == {"east", "west"}  # both castords claimed: the limit was shared
        assert rateapp.manager.rate_limits()["name:paced"]["burst"] == BURST
        pidfile = str(app_dir / "east.pid")
        report = json.loads(run_cli(app_dir, "status", "--pidfile", pidfile, "--json").stdout)
        assert report["rate_limits"]["name:paced"]["rate"] == RATE and report["rate_limits"]["name:paced"]["burst"] == BURST
        human = run_cli(app_dir, "status", "--pidfile", pidfile).stdout
        assert f"rate limits: name:paced {RATE}/s burst {BURST} (" in human, human
    finally:
        rateapp.manager.close()
        sys.modules.pop("rateapp", None)


def test_two_castords_together_keep_to_a_rate_limit(daemons, app_dir):  # noqa: F811
    _drain_at_the_limit(daemons, app_dir)


@pytest.mark.postgres
def test_two_castords_together_keep_to_a_rate_limit_on_postgresql(daemons, app_dir, postgres_db_url,  # noqa: F811
                                                                    monkeypatch):
    monkeypatch.setenv("CASTOR_TEST_DB", postgres_db_url)
    _drain_at_the_limit(daemons, app_dir)
