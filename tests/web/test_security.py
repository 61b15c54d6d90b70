"""The token, session and CSRF rules, and which binds need a token (castor/webui/security.py)."""

from __future__ import annotations

import pytest

from castor.webui.security import MIN_TOKEN_LENGTH, Guard, WebSetupError, check_bind, is_loopback, read_token_file

TOKEN = "t" * MIN_TOKEN_LENGTH


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("LOCALHOST", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("example.org", False),
    ("", False),
])
def test_which_hosts_are_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_a_bind_beyond_this_machine_needs_a_token():
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", TOKEN)
    with pytest.raises(WebSetupError, match=r"--host 0\.0\.0\.0 is reachable from other machines: give --token-file"):
        check_bind("0.0.0.0", None)


def test_the_token_file(tmp_path):
    good = tmp_path / "token"
    good.write_text(f"  {TOKEN}\n")
    assert read_token_file(good) == TOKEN
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(WebSetupError, match=f"at least {MIN_TOKEN_LENGTH} characters \\(it has 3\\)"):
        read_token_file(short)
    with pytest.raises(WebSetupError, match="no such file"):
        read_token_file(tmp_path / "missing")
    with pytest.raises(WebSetupError, match="cannot read it"):
        read_token_file(tmp_path)  # a directory
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" * 20)
    with pytest.raises(WebSetupError, match="cannot read it"):
        read_token_file(binary)


def test_tokens_sessions_and_forms():
    guard = Guard(TOKEN)
    assert guard.required and guard.token_matches(TOKEN) and guard.token_matches(f" {TOKEN}\n")
    assert not guard.token_matches(TOKEN + "x") and not guard.token_matches(None) and not guard.token_matches("")
    assert guard.bearer_matches(f"Bearer {TOKEN}") and guard.bearer_matches(f"bearer {TOKEN}")
    assert not guard.bearer_matches(f"Basic {TOKEN}") and not guard.bearer_matches(TOKEN)
    session = guard.new_session()
    assert guard.session_valid(session) and session != guard.new_session()
    assert not guard.session_valid(session.replace(".", ".0", 1)) and not guard.session_valid("")
    assert not Guard(TOKEN + "-rotated").session_valid(session)
    field = guard.csrf_field("cookie-1")
    assert guard.csrf_valid("cookie-1", field) and not guard.csrf_valid("cookie-2", field)
    assert not guard.csrf_valid(None, field) and not guard.csrf_valid("cookie-1", None)
    assert Guard(TOKEN).csrf_valid("cookie-1", field)  # the same token signs alike after a restart


def test_without_a_token_everyone_on_the_machine_gets_in_and_forms_are_still_signed():
    guard = Guard(None)
    assert not guard.required and not guard.token_matches("anything") and not guard.session_valid("a.b")
    field = guard.csrf_field("cookie")
    assert guard.csrf_valid("cookie", field)
    assert not Guard(None).csrf_valid("cookie", field)  # a fresh key per process
