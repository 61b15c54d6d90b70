"""expires=: the time after which a task not yet started is not worth starting. Pure; no I/O.

A task carries its expiry as an absolute Unix time in its options (key "expires"),
so no migration was needed and every attempt (a retry, a task back from a lost
worker) is checked against the same instant: a worker that claims it later ends it
cancelled with castor.TaskExpired instead of running it, and the store's sweep
(Store.expire_pending) ends those nobody claims (a paused queue, no worker).

A workflow member stored waiting (a later link, a chord's callback) cannot start
before its predecessors end, so expires= in seconds counts from its release: it
carries the seconds instead (key "expires_after"), and the store's release statement
turns them into its "expires" then. A datetime is a fixed instant either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from castor.durations import from_epoch, to_epoch, to_seconds
from castor.errors import ConfigurationError
from castor.failures import describe_message

# The options key of a task record: its expiry as a Unix time.
EXPIRES_KEY = "expires"
# The options key of a waiting workflow member: expires= seconds, counted from its release.
EXPIRES_AFTER_KEY = "expires_after"
EXPIRED_TYPE = "castor.errors.TaskExpired"


@dataclass(frozen=True, slots=True)
class Expiry:
    """expires= as given: seconds after the enqueue, or a fixed instant."""

    seconds: float | None = None
    at: float | None = None

    def deadline(self, enqueued_at: float) -> float:
        return self.at if self.at is not None else enqueued_at + (self.seconds or 0.0)


def parse_expires(value: Any, where: str) -> Expiry | None:
    """An Expiry from seconds (a number or a timedelta) or a datetime (a naive one is
    local time, as for eta=); None stays None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        try:
            return Expiry(at=to_epoch(value, "expires"))
        except ValueError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
    try:
        seconds = to_seconds(value, "expires")
    except TypeError:
        raise ConfigurationError(
            f"{where}: expires must be a number of seconds, a timedelta or a datetime, "
            f"not {type(value).__name__}") from None
    except ValueError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    if not seconds:
        raise ConfigurationError(f"{where}: expires must be more than 0 seconds, not {value!r}")
    return Expiry(seconds=seconds)


def from_release(options: dict[str, Any], expiry: Expiry | None) -> dict[str, Any]:
    """The stored options of a member that waits for its release: an expiry in seconds
    waits there too (EXPIRES_AFTER_KEY) instead of running from the enqueue."""
    if expiry is None or expiry.seconds is None:
        return options
    waiting = {k: v for k, v in options.items() if k != EXPIRES_KEY}
    waiting[EXPIRES_AFTER_KEY] = expiry.seconds
    return waiting


def expires_at(options: dict[str, Any]) -> float | None:
    """A task record's expiry time, or None (a hand-edited row may hold anything)."""
    value = options.get(EXPIRES_KEY)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def is_expired(options: dict[str, Any], now: float) -> bool:
    at = expires_at(options)
    return at is not None and at <= now


def expired_message(at: float) -> str:
    shown = from_epoch(at)
    return f"expired at {shown.isoformat() if shown else at}: it was not started by then"


def expired_error(at: float) -> dict[str, Any]:
    """The error record of a task that expired before it started."""
    return describe_message(EXPIRED_TYPE, expired_message(at))
