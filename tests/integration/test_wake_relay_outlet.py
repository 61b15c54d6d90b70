"""The master's end of a child's wake-up socket (castor/store/pg_relay.py) never blocks:
a child that does not read is owed one wake-up for everyone, not an unbounded buffer."""

from __future__ import annotations

import socket

import pytest

from castor.store.pg_relay import OUTLET_LIMIT, _Outlet


def read_all(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


@pytest.mark.timeout(30)
def test_a_child_that_does_not_read_is_owed_one_wake_up_for_everyone():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    outlet = _Outlet(ours)
    lines = [f"task:{i:08}".encode() + b"\n" for i in range(200_000)]  # far more than a socket holds
    for line in lines:
        assert outlet.push(line)
        assert len(outlet.pending) <= OUTLET_LIMIT + len(line) + 1
    received = read_all(theirs)
    assert outlet.push(b"")  # a quiet pass flushes what is owed
    received += read_all(theirs)
    assert outlet.pending == b""
    assert received.endswith(b"\n")
    got = received.split(b"\n")[:-1]
    sent = [line.rstrip(b"\n") for line in lines]
    # Whole lines in order, then the everyone-line ('') standing for those dropped,
    # then the newest ones (pushed after the last collapse), in order.
    assert len(got) < len(sent)
    cut = got.index(b"")
    assert got[:cut] == sent[:cut]
    after = got[cut + 1:]
    assert b"" not in after
    assert after == sent[len(sent) - len(after):]
    outlet.close()
    theirs.close()


@pytest.mark.timeout(30)
def test_an_outlet_whose_child_end_is_gone_says_so():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    outlet = _Outlet(ours)
    theirs.close()
    assert not outlet.push(b"work:process\n")
    outlet.close()
