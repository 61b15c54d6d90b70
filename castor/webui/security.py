"""Who may see the dashboard and who may act: the token, the session cookie, CSRF.

Pure functions and one small class; the app (castor/webui/app.py) applies them to
each request. Every comparison of a secret is constant-time (hmac.compare_digest).

* The token (`--token-file`) is accepted as `Authorization: Bearer TOKEN`, or once
  through the login form, which sets a session cookie: `nonce.signature`, signed
  with the token, so it needs no server-side state and dies when the token changes.
* CSRF is a signed double submit: a random `castor_csrf` cookie, and in every form
  the cookie's HMAC under the app's secret. A page of another site can make the
  browser send the cookie, but cannot read it to compute the form field.
* Both cookies are HttpOnly and SameSite=Lax: a browser does not send them with
  another site's POST at all, and still sends them when a link (an alert's, a
  chat's) opens the dashboard, so a logged-in person stays logged in.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from pathlib import Path

from castor.errors import CastorError

SESSION_COOKIE = "castor_session"
CSRF_COOKIE = "castor_csrf"
CSRF_FIELD = "csrf"
# A token shorter than this is guessable by anyone who can reach the port.
MIN_TOKEN_LENGTH = 16


class WebSetupError(CastorError):
    """`castord web` cannot start as asked (a bad option, an unusable token file)."""


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token."""
    if token is None and not is_loopback(host):
        raise WebSetupError(
            f"--host {host} is reachable from other machines: give --token-file PATH (a file holding a "
            f"secret of at least {MIN_TOKEN_LENGTH} characters) so that only people with the token get in, "
            "or bind 127.0.0.1 and reach it through an SSH tunnel or a reverse proxy")


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in `path` (surrounding whitespace ignored), or WebSetupError saying what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WebSetupError(f"--token-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WebSetupError(f"--token-file {path}: cannot read it ({exc})") from None
    token = text.strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise WebSetupError(f"--token-file {path}: the token must be at least {MIN_TOKEN_LENGTH} characters "
                            f"(it has {len(token)}); make one with: python -c 'import secrets; "
                            "print(secrets.token_urlsafe(32))' > FILE")
    return token


def _sign(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


class Guard:
    """The secrets of one dashboard: its token (or none) and the key that signs forms."""

    def __init__(self, token: str | None):
        self.token = token
        # With a token, forms stay valid across restarts; without one, a fresh key per process.
        self._key = hashlib.sha256(b"castor-web-csrf:" + token.encode()).digest() if token else os.urandom(32)

    @property
    def required(self) -> bool:
        return self.token is not None

    def token_matches(self, offered: str | None) -> bool:
        if self.token is None or offered is None:
            return False
        return hmac.compare_digest(offered.strip().encode(), self.token.encode())

    def bearer_matches(self, authorization: str | None) -> bool:
        scheme, _, value = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(value)

    def new_session(self) -> str:
        assert self.token is not None
        nonce = secrets.token_hex(16)
        return f"{nonce}.{_sign(self.token.encode(), 'session:' + nonce)}"

    def session_valid(self, cookie: str | None) -> bool:
        if self.token is None or not cookie:
            return False
        nonce, _, signature = cookie.partition(".")
        return hmac.compare_digest(signature.encode(), _sign(self.token.encode(), "session:" + nonce).encode())

    def csrf_field(self, cookie: str) -> str:
        """The value a form must carry for a browser holding CSRF cookie `cookie`."""
        return _sign(self._key, "csrf:" + cookie)

    def csrf_valid(self, cookie: str | None, field: str | None) -> bool:
        if not cookie or not field:
            return False
        return hmac.compare_digest(field.encode(), self.csrf_field(cookie).encode())


def new_csrf_cookie() -> str:
    return secrets.token_hex(16)
