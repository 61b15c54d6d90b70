"""castor's own options in a postgresql:// URL, taken out before libpq reads it.

libpq refuses a query parameter it does not know, so castor's options ride in the
URL's query under a `castor_` prefix and are removed here; the rest of the URL
goes to libpq exactly as written. They exist for a connection pooler in
transaction mode (pgbouncer), where a server session lasts one transaction:

* `castor_listen=URL`: the LISTEN connection (a session that must outlive a
  transaction) goes to this URL, a direct one to the server, instead of the
  store's. `castor_listen=off`: no LISTEN at all; waiters re-check the database
  every 0.5 s instead of being woken.
* `castor_prepare=off`: no server-side prepared statements (psycopg prepares a
  statement run 5 times on a connection; a pooler that does not track them hands
  the next transaction a server session without it, or with another's).

Every process that opens the store (castord's children, `castord status`) is given
the whole URL and reads the same options.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from castor.errors import ConfigurationError

PREFIX = "castor_"
OFF = "off"
_SWITCH = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}
_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class StoreURL:
    """What a store URL asks for: `conninfo` for libpq, and castor's options."""

    conninfo: str
    # Where LISTEN connects; None: nowhere (waiters poll).
    listen: str | None
    prepare: bool


def parse_store_url(url: str) -> StoreURL:
    """Split castor's options out of `url`; a bad option is a ConfigurationError."""
    parts = urlsplit(url)
    kept: list[str] = []
    options: dict[str, str] = {}
    for piece in parts.query.split("&") if parts.query else []:
        key, _, value = piece.partition("=")
        key = unquote_plus(key)
        if not key.startswith(PREFIX):
            kept.append(piece)  # libpq's, verbatim
        elif key in options:
            raise ConfigurationError(f"the store URL gives {key} twice; give it once")
        else:
            options[key] = unquote_plus(value)
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(kept), parts.fragment))
    listen = _listen(options.pop("castor_listen", None), conninfo)
    prepare = _prepare(options.pop("castor_prepare", "on"))
    if options:
        raise ConfigurationError(
            f"the store URL has an option castor does not know: {', '.join(sorted(options))}; "
            "castor's URL options are castor_listen and castor_prepare (docs/postgresql.md)")
    return StoreURL(conninfo, listen, prepare)


def _listen(value: str | None, conninfo: str) -> str | None:
    if value is None:
        return conninfo
    if value.lower() == OFF:
        return None
    if urlsplit(value).scheme not in _SCHEMES:
        raise ConfigurationError(
            f"castor_listen must be a postgresql:// URL (percent-encoded inside the store URL) or "
            f"'off', not {value!r}; for example castor_listen=postgresql%3A%2F%2Fuser%40host%3A5432%2Fdbname")
    if any(k.startswith(PREFIX) for k in _query_keys(value)):
        raise ConfigurationError("the castor_listen URL cannot carry castor_ options of its own")
    return value


def _prepare(value: str) -> bool:
    try:
        return _SWITCH[value.lower()]
    except KeyError:
        raise ConfigurationError(f"castor_prepare must be on or off, not {value!r}") from None


def _query_keys(url: str) -> list[str]:
    query = urlsplit(url).query
    return [unquote_plus(piece.partition("=")[0]) for piece in query.split("&")] if query else []
