"""castor.store.display_url / scrub_secrets: a store URL shown or logged never carries its password."""

from __future__ import annotations

import pytest

from castor.store import display_url, scrub_secrets


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://app:s3cret@db.internal/tasks", "postgresql://app:***@db.internal/tasks"),
    ("postgres://app:s3cret@h1:5432,h2:5433/tasks?sslmode=require",
     "postgres://app:***@h1:5432,h2:5433/tasks?sslmode=require"),
    ("postgresql://app@h/db?password=s3cret&sslmode=require", "postgresql://app@h/db?password=***&sslmode=require"),
    ("postgresql://app@h/db?sslmode=require&PASSWORD=s3cret", "postgresql://app@h/db?sslmode=require&PASSWORD=***"),
    ("postgresql://app@h/db?pass%77ord=s3cret", "postgresql://app@h/db?pass%77ord=***"),  # libpq decodes keys
    ("postgresql://app@h/db?sslpassword=s3cret", "postgresql://app@h/db?sslpassword=***"),
    # An unencoded @ in the password: everything up to the last @ is the credentials.
    ("postgresql://app:s3@cret@h/db", "postgresql://app:***@h/db"),
    ("postgresql://app@h/db", "postgresql://app@h/db"),
    ("postgresql://h/db?host=/run/postgresql", "postgresql://h/db?host=/run/postgresql"),
    # Files hold no password, whatever their names look like.
    ("/srv/app/a:b@c.db", "/srv/app/a:b@c.db"),
    ("sqlite:///srv/app/a:b@c.db", "sqlite:///srv/app/a:b@c.db"),
])
def test_display_url_hides_the_password(url, shown):
    assert display_url(url) == shown


def test_scrub_secrets_removes_the_password_as_written_and_decoded():
    url = "postgresql://app:p%40ss@h/db?password=other"
    assert scrub_secrets('bad token "p%40ss", p@ss and other', url) == 'bad token "***", *** and ***'
    assert scrub_secrets("nothing to hide", "postgresql://app@h/db") == "nothing to hide"
    assert scrub_secrets("no url at all", None) == "no url at all"


def test_a_url_inside_the_url_is_shown_without_its_password_too():
    """castor_listen= names the server LISTEN goes to (a pooler in between): its own
    password, percent-encoded, is hidden as the outer one is, and scrubbed from messages."""
    from urllib.parse import quote

    inner = "postgresql://app:s3cret@db.internal:5432/tasks"
    url = "postgresql://app@bouncer:6432/tasks?castor_prepare=off&castor_listen=" + quote(inner, safe="")
    shown = display_url(url)
    assert "s3cret" not in shown and "s3cret" not in shown.replace("%", "")
    assert shown == ("postgresql://app@bouncer:6432/tasks?castor_prepare=off&castor_listen="
                     + quote("postgresql://app:***@db.internal:5432/tasks", safe=""))
    assert scrub_secrets(f"cannot LISTEN: password s3cret refused ({url})", url).count("s3cret") == 0
    off = "postgresql://app@bouncer/tasks?castor_listen=off"
    assert display_url(off) == off
