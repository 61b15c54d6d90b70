"""benchmarks/compare_pg.py's observer on a real server: follow() ends at the full count
of n, not at the last job's own end; a failed job stops it, named."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import compare_pg  # noqa: E402

from tests.postgres import TestPostgres  # noqa: E402


@pytest.fixture
def database(postgres_url: str):
    pg = TestPostgres(postgres_url, None)
    with pg.database() as url:
        yield url


def tasks_table(url: str, statuses: list[str]) -> list[str]:
    """A castor_tasks stand-in with the two columns follow() reads; the ids in order."""
    ids = [f"t{i:03}" for i in range(len(statuses))]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE castor_tasks (id text PRIMARY KEY, status text NOT NULL)")
        conn.cursor().executemany("INSERT INTO castor_tasks VALUES (%s, %s)", list(zip(ids, statuses, strict=True)))
    return ids


@pytest.mark.timeout(60)
def test_follow_waits_for_the_full_count_even_when_the_last_job_ended_first(database: str) -> None:
    ids = tasks_table(database, ["success", "running", "success"])  # the last queued ended, not all
    with compare_pg.read_only(database) as conn, psycopg.connect(database, autocommit=True) as writer:
        started = time.perf_counter()
        late = []

        def count(c):
            done = compare_pg.castor_succeeded(c)
            if not late:  # the first full count: now the middle one ends
                writer.execute("UPDATE castor_tasks SET status = 'success' WHERE id = %s", (ids[1],))
                late.append(True)
            return done

        first, first_count, last = compare_pg.follow(conn, 3, started, (ids[0], ids[-1]), count=count,
                                                     done=compare_pg.castor_done)
    assert first_count == 2 and last >= first  # ended at the count of 3, one poll or more later


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("statuses", "said"), [
    (["failed", "running", "running"], "castor task t000 failed"),  # the job looked up by id
    (["success", "failed", "running"], "castor tasks failed"),  # one the full count finds
])
def test_a_failed_job_stops_follow(database: str, statuses: list[str], said: str) -> None:
    ids = tasks_table(database, statuses)
    with compare_pg.read_only(database) as conn, pytest.raises(RuntimeError, match=said):
        compare_pg.follow(conn, 3, time.perf_counter(), (ids[0], ids[-1]), count=compare_pg.castor_succeeded,
                          done=compare_pg.castor_done)
