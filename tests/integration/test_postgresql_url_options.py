"""castor's options in a PostgreSQL store URL (castor/store/pg_url.py) on a real server:
castor_listen (where LISTEN goes, or none), castor_prepare, and how castor's connections
are named in pg_stat_activity."""

from __future__ import annotations

import os
import socket
import threading
import time
from urllib.parse import quote, urlsplit

import pytest

import castor
from castor.errors import ConfigurationError
from castor.store import open_store
from castor.testing import drain
from tests.contract.builders import new

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def opened():
    stores = []

    def open_one(url: str):
        store = open_store(url)
        stores.append(store)
        return store

    yield open_one
    for store in stores:
        store.close()


def backends(url: str, application_name: str) -> list[str]:
    """The current query of each backend named `application_name` on url's database."""
    with psycopg.connect(url) as conn:
        return [q for (q,) in conn.execute(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            (application_name,)).fetchall()]


def test_castor_listen_sends_the_listen_connection_to_its_url(opened, postgres_db_url):
    listen_url = postgres_db_url + "&application_name=castor-listener"
    store = opened(postgres_db_url + "&castor_listen=" + quote(listen_url, safe=""))
    seen = store.generation()  # the listener connects
    assert [q.startswith("LISTEN ") for q in backends(postgres_db_url, "castor-listener")] == [True]
    opened(postgres_db_url).enqueue([new("t1", now=time.time())])
    assert store.wait_for_change(seen, 30) != seen  # woken by the other store's NOTIFY


def test_castor_listen_off_listens_nowhere_and_join_still_returns(postgres_db_url):
    polling = castor.Manager(postgres_db_url + "&application_name=castor-polling&castor_listen=off")
    worker = castor.Manager(postgres_db_url)
    try:
        for m in (polling, worker):
            m.task(mode="thread", name="slow_add")(lambda a, b: time.sleep(0.3) or a + b)
        seen = polling.store.generation()
        task = polling.registry["slow_add"].delay(2, 3)
        # Its own commit's NOTIFY wakes no one here: the wait runs out, the caller re-checks.
        assert polling.store.wait_for_change(seen, 0.3) == seen
        runner = threading.Thread(target=drain, args=(worker,))
        runner.start()
        try:
            assert task.join(timeout=30) == 5
        finally:
            runner.join(30)
        assert not any(q.startswith("LISTEN") for q in backends(postgres_db_url, "castor-polling"))
    finally:
        polling.close()
        worker.close()


def test_castor_listen_to_another_database_is_refused(postgres, postgres_db_url):
    with postgres.database() as other:
        with pytest.raises(ConfigurationError) as err:
            open_store(postgres_db_url + "&castor_listen=" + quote(other, safe=""))
    here, there = urlsplit(postgres_db_url).path.lstrip("/"), urlsplit(other).path.lstrip("/")
    assert str(err.value) == (
        f"castor_listen reaches database {there!r}, but the store is in {here!r}: notifications stay "
        "within one database; name the same database in both URLs")


def test_a_bad_castor_option_is_refused_by_the_manager(postgres_db_url):
    with pytest.raises(ConfigurationError, match="castor_prepare must be on or off, not 'no'"):
        castor.Manager(postgres_db_url + "&castor_prepare=no")


def prepared(store) -> int:
    """How many statements the store's (one, idle) connection has prepared."""
    return store._fetch("SELECT count(*) FROM pg_prepared_statements")[0][0]  # noqa: SLF001


def test_castor_prepare_off_prepares_no_statement(opened, postgres_db_url):
    default, unprepared = opened(postgres_db_url), opened(postgres_db_url + "&castor_prepare=off")
    for store in (default, unprepared):
        for _ in range(10):  # psycopg prepares a statement on its 6th run on a connection
            store.status("nothing")
    assert prepared(default) >= 1
    assert prepared(unprepared) == 0


def test_castors_connections_are_named_after_their_process(opened, postgres_db_url):
    opened(postgres_db_url).status("nothing")
    name = f"castor {os.getpid()}@{socket.gethostname()}"[:63]
    assert backends(postgres_db_url, name)  # unless the URL sets application_name itself


@pytest.mark.parametrize("query, seconds", [("", "10"), ("&connect_timeout=3", "3")])
def test_a_connection_attempt_gives_up_after_10_s_unless_the_url_says(opened, postgres_db_url, query, seconds):
    conn = opened(postgres_db_url + query)._connect()  # noqa: SLF001
    try:
        assert conn.info.get_parameters()["connect_timeout"] == seconds
    finally:
        conn.close()
