"""castord's wake-up relay (castor/store/pg_relay.py) on a real server: a store that
listens (the master's) feeds a hub; a store installed on a hub's socket (a child's)
wakes from it, without a LISTEN of its own, and on a LISTEN of its own once the relay
breaks. A polling store's generation never moves: a moved generation here is a
notification that arrived."""

from __future__ import annotations

import logging
import time

import pytest

from castor.store import open_store
from castor.store.base import work_topic
from castor.store.pg_relay import RelayHub, start_hub, use_relay
from tests.conftest import wait_until
from tests.contract.builders import new
from tests.contract.conftest import postgresql_location

psycopg = pytest.importorskip("psycopg")

LONG = 30.0
TOPIC = work_topic("process")


@pytest.fixture
def location(request: pytest.FixtureRequest, postgres_url: str) -> str:
    return postgresql_location(request)


@pytest.fixture
def stores(location):
    opened = []

    def open_one():
        store = open_store(location)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def relayed(stores):
    """(master store, its hub, a child store on the hub, the child's socket key, a writer)."""
    master, child, writer = stores(), stores(), stores()
    hub = start_hub(master)
    assert isinstance(hub, RelayHub)
    key, end = hub.attach()
    assert use_relay(child, end)
    yield master, hub, child, key, writer
    hub.close()


def listening_backends(store) -> list[tuple[int, str]]:
    """(pid, application_name) of the backends whose last statement was a LISTEN on the
    store's channel (the test's own schema: other tests' listeners are not counted)."""
    return [tuple(row) for row in store._fetch(  # noqa: SLF001
        "SELECT pid, application_name FROM pg_stat_activity "
        "WHERE datname = current_database() AND query = 'LISTEN ' || quote_ident(%s)",
        (store._channel,))]  # noqa: SLF001


def woken(store, seen: int) -> bool:
    return store.wait_for_change(seen, LONG, TOPIC) != seen


@pytest.mark.timeout(60)
def test_a_child_store_wakes_from_the_relay_without_a_listen_of_its_own(relayed):
    master, _hub, child, _key, writer = relayed
    before = listening_backends(writer)
    seen = child.generation(TOPIC)
    writer.enqueue([new("a", mode="process")])
    assert woken(child, seen)
    # The master's LISTEN is the only one among the three stores (they share one process,
    # so the count is what tells: one, not two).
    assert len(listening_backends(writer)) == len(before) == 1


@pytest.mark.timeout(60)
def test_the_master_listener_reconnecting_wakes_the_child_and_notifications_flow_again(relayed, postgres_url):
    _master, _hub, child, _key, writer = relayed
    ((pid, _name),) = listening_backends(writer)
    seen = child.generation(TOPIC)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert woken(child, seen)  # the lost connection's everyone-wake, relayed
    wait_until(lambda: [p for p, _ in listening_backends(writer) if p != pid], LONG, "the master to LISTEN again")
    seen = child.generation(TOPIC)
    writer.enqueue([new("b", mode="process")])
    assert woken(child, seen)


@pytest.mark.timeout(60)
def test_a_closed_relay_falls_back_to_a_listen_of_the_childs_own_and_says_so_once(relayed, caplog):
    _master, hub, child, key, writer = relayed
    caplog.set_level(logging.WARNING, logger="castor.store.relay")
    seen = child.generation()
    hub.detach(key)  # the master's end closes
    assert child.wait_for_change(seen, LONG) != seen  # everyone is woken to look again
    wait_until(lambda: len(listening_backends(writer)) == 2, LONG, "the child's own LISTEN")
    seen = child.generation(TOPIC)
    writer.enqueue([new("c", mode="process")])
    assert woken(child, seen)
    assert len([r for r in caplog.records if "wakeup.relay_lost" in r.getMessage()]) == 1


@pytest.mark.timeout(60)
def test_a_store_that_began_waiting_keeps_its_own_listener(stores):
    master, child = stores(), stores()
    hub = start_hub(master)
    assert hub is not None
    child.generation()  # waiting began: its listener is open
    _key, end = hub.attach()
    assert not use_relay(child, end)
    assert end.fileno() == -1  # closed: the master's writes to it fail, and it is dropped
    hub.close()


@pytest.mark.timeout(60)
def test_a_notification_between_the_childs_socket_and_its_start_is_kept(stores):
    """The master makes a child's socket before it starts the child: work notified while
    the child boots, when no child waits for work, is owed to the first that does (its
    first wait ends at once); what every child hears waits in the socket, and moves the
    child's generation once its store takes the relay."""
    master, child, writer = stores(), stores(), stores()
    hub = start_hub(master)
    assert hub is not None
    _key, end = hub.attach()
    marker = master.generation(TOPIC)
    writer.enqueue([new("early", mode="process")])
    assert master.wait_for_change(marker, LONG, TOPIC) != marker  # the master has heard it
    watched = new("watched", mode="thread")
    writer.enqueue([watched])
    marker = master.generation()
    writer.cancel(watched.id, now=time.time())  # a change every child hears ('')
    assert master.wait_for_change(marker, LONG) != marker
    assert use_relay(child, end)
    wait_until(lambda: child.generation() > 0, LONG, "the early everyone-line in the child")
    seen = child.generation(TOPIC)
    assert child.wait_for_change(seen, LONG, TOPIC) != seen  # the owed work line, at once
    hub.close()


@pytest.mark.timeout(60)
def test_a_claim_that_took_all_it_asked_for_says_more_and_a_short_one_does_not(stores):
    """What a child store says to the master after its claims (read from the master's end of
    its socket by hand): `more` after a full claim, whether plain or in an exchange; nothing
    after a short one (the next line is the idle of a wait that came after it)."""
    import socket  # noqa: PLC0415
    import time  # noqa: PLC0415

    child, writer = stores(), stores()
    master_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    master_end.settimeout(LONG)
    assert use_relay(child, child_end)
    writer.enqueue([new(f"t{i}", mode="process") for i in range(3)])
    said = master_end.makefile("r")

    def claim(limit):
        return child.claim("w", mode="process", queues=None, limit=limit, lease=30.0, now=time.time())

    assert len(claim(1)) == 1
    assert said.readline() == f"more {TOPIC}\n"
    _, got = child.settle_and_claim([], "w", mode="process", queues=None, limit=1, lease=30.0, now=time.time())
    assert len(got) == 1
    assert said.readline() == f"more {TOPIC}\n"
    assert len(claim(5)) == 1  # short: nothing said
    seen = child.generation(TOPIC)
    child.wait_for_change(seen, 0.05, TOPIC)
    assert [said.readline(), said.readline()] == [f"idle {TOPIC}\n", f"busy {TOPIC}\n"]
    master_end.close()
