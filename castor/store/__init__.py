"""Task storage. The only package in castor that speaks SQL."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote, unquote

from castor.errors import ConfigurationError
from castor.store.base import NewTask, Query, Store, TaskRecord

__all__ = ["NewTask", "Query", "Store", "TaskRecord", "database_path", "display_url", "is_server_url", "open_store",
           "scrub_secrets"]


def database_path(db: Any) -> str:
    """The file behind a BeaverDB, an AsyncBeaverDB, a path, or a `sqlite:` URL."""
    if isinstance(db, (str, os.PathLike)):
        text = os.fspath(db)
        if isinstance(text, str) and text.startswith(SQLITE_SCHEME):
            return _sqlite_url_path(text)
        return text  # type: ignore[return-value]
    engine = getattr(db, "_async_db", db)  # BeaverDB wraps an AsyncBeaverDB
    path = getattr(engine, "_db_path", None)
    if isinstance(path, (str, os.PathLike)):
        return os.fspath(path)  # type: ignore[return-value]
    raise ConfigurationError(
        f"Manager needs a beaver.BeaverDB or a path to its file, not {type(db).__name__}; for example "
        "castor.Manager(BeaverDB('app.db')) or castor.Manager('app.db') (or a store URL: sqlite:///path)"
    )


SQLITE_SCHEME = "sqlite:"
POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")


def _sqlite_url_path(url: str) -> str:
    """sqlite:///abs/path.db -> /abs/path.db; sqlite:rel.db -> rel.db (as file: URLs)."""
    rest = url[len(SQLITE_SCHEME):]
    if rest.startswith("//"):
        rest = rest[2:]
        if not rest.startswith("/"):
            raise ConfigurationError(
                f"store URL {url!r} names a host; a SQLite store is a local file: sqlite:///absolute/path.db "
                "or sqlite:relative/path.db")
    if not rest:
        raise ConfigurationError(f"store URL {url!r} names no file; for example sqlite:///var/lib/app/app.db")
    return rest


def open_store(db: Any, *, lock_timeout: float = 30.0, durable: bool = False) -> Store:
    """The store for a BeaverDB, a path to its file, or a URL: `sqlite:///path` (and
    `sqlite:path`), or `postgresql://...` (also `postgres://`; the extra
    castor[postgresql]). A URL of another scheme is refused by name."""
    from castor.store.sqlite import SQLiteStore

    if isinstance(db, str) and db.startswith(POSTGRESQL_SCHEMES):
        from castor.store.postgresql import PostgreSQLStore

        try:
            return PostgreSQLStore(db)
        except ConfigurationError as exc:
            # libpq quotes the part of a URL it cannot read, which may be the password,
            # and ends its message with a line break: one line, without the password.
            message = scrub_secrets(" ".join(str(exc).split()).replace(" )", ")"), db)
            if message == str(exc):
                raise
            raise ConfigurationError(message) from None
    if isinstance(db, str) and _SCHEME.match(db) and not db.startswith(SQLITE_SCHEME):
        scheme = db.split(":", 1)[0]
        raise ConfigurationError(
            f"castor has no store for {scheme}: URLs; use a beaver-db file (a path, sqlite:///path, "
            "or a BeaverDB) or postgresql://")
    path = database_path(db)
    if path == ":memory:" or not path:
        raise ConfigurationError(
            "castor needs a database file that workers in other processes can open; "
            "':memory:' cannot be shared"
        )
    return SQLiteStore(path, lock_timeout=lock_timeout, durable=durable)


# A URL's scheme (RFC 3986), two letters or more so that a Windows drive is a path.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_server_url(target: Any) -> bool:
    """True for a URL of a database server (postgresql://...), not of a file."""
    return isinstance(target, str) and bool(_SCHEME.match(target)) and not target.startswith(SQLITE_SCHEME)


# What libpq takes a password from in a URL's query (keys may be percent-encoded).
_SECRET_PARAMETERS = ("password", "sslpassword")
# castor's own options whose value is another URL (castor/store/pg_url.py).
_URL_PARAMETERS = ("castor_listen",)
HIDDEN = "***"


def _secrets(url: str) -> tuple[list[str], str]:
    """The passwords a store URL carries, and the URL with each replaced by ***."""
    if not is_server_url(url):  # a file's path or sqlite: URL holds no password
        return [], url
    scheme, rest = url.split("://", 1)
    authority, mark, query = rest.partition("?")
    found: list[str] = []
    # The credentials end at the last @ before the query: an unencoded @ in a
    # password would otherwise leave its tail in view.
    at = authority.rfind("@")
    if at >= 0 and ":" in authority[:at]:
        user, password = authority[:at].split(":", 1)
        found.append(password)
        authority = f"{user}:{HIDDEN}{authority[at:]}"
    parts = []
    for part in query.split("&") if mark else []:
        key, eq, value = part.partition("=")
        if eq and unquote(key).lower() in _SECRET_PARAMETERS and value:
            found.append(value)
            part = f"{key}={HIDDEN}"
        elif eq and unquote(key).lower() in _URL_PARAMETERS and value:
            # A URL inside the URL (castor_listen=, percent-encoded): its own passwords.
            inner, shown = _secrets(unquote(value))
            found += inner
            part = f"{key}={quote(shown, safe='') if shown != unquote(value) else value}"
        parts.append(part)
    return found, f"{scheme}://{authority}{mark}{'&'.join(parts)}"


def display_url(target: Any) -> str:
    """A store's URL or path fit to show or log: any password replaced by ***
    (`postgresql://u:***@h/db`, `?password=***`). A path is shown as it is."""
    return _secrets(os.fspath(target) if isinstance(target, os.PathLike) else str(target))[1]


def scrub_secrets(text: str, url: Any) -> str:
    """`text` with every password of `url` (as written, and percent-decoded) replaced by ***."""
    secrets, _ = _secrets(url) if isinstance(url, str) else ([], "")
    for secret in secrets:
        for form in {secret, unquote(secret)}:
            if form:
                text = text.replace(form, HIDDEN)
    return text
