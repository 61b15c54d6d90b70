"""The store contract: one suite that every backend passes.

Each test gets a fresh, empty store of each backend in BACKENDS, and speaks to it only
through `castor.store.base.Store`: no SQL, no file paths. A backend is named by where
`castor.store.open_store` finds it (a file path today, a URL later), a string that child
processes can be given too. To run the suite on another backend, add one entry to
BACKENDS: a function that makes a fresh, empty location for one test.

Time: every `now=` is the wall clock (`clocks.wall`), and leases run on the store's own
clock, which the tests hold still and move by hand (`clocks.lease`, put in as
`store.clock`, the attribute base.py offers for this). The two start far apart, so that a
lease measured on the wrong one shows.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest

from castor.store import Store
from tests.contract.builders import Backend, Clocks


def sqlite_location(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("tmp_path") / "contract.db")


def postgresql_location(request: pytest.FixtureRequest) -> str:
    """A fresh, empty schema on the tests' PostgreSQL server (tests/postgres.py: the one at
    $CASTOR_TEST_POSTGRES_URL, or a private throwaway one), named in the URL's search_path
    (castor's tables go in the connection's current schema); dropped after."""
    url = server_url(request)
    import psycopg

    schema = f"contract_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")

    def drop() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

    request.addfinalizer(drop)
    return url + ("&" if "?" in url else "?") + "options=" + quote(f"-csearch_path={schema}")


def server_url(request: pytest.FixtureRequest) -> str:
    """The tests' PostgreSQL server (its maintenance database)."""
    return str(request.getfixturevalue("postgres_url"))


# name -> a fresh, empty location for one test (what open_store takes).
BACKENDS: dict[str, Callable[[pytest.FixtureRequest], str]] = {
    "sqlite": sqlite_location,
    "postgresql": postgresql_location,
}

@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


# A PostgreSQL run is marked as such: under CI it must run, not skip (tests/postgres.py).
_MARKS = {"postgresql": [pytest.mark.postgres]}


@pytest.fixture(params=[pytest.param(name, marks=_MARKS.get(name, [])) for name in sorted(BACKENDS)])
def backend(request: pytest.FixtureRequest, clocks: Clocks) -> Iterator[Backend]:
    backend = Backend(request.param, BACKENDS[request.param](request), clocks)
    yield backend
    backend.close_all()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()
