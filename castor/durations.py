"""One place that turns user-facing durations and instants into float seconds."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

# The longest duration castor takes (a countdown, a timeout, a TTL, a retry delay):
# a century. Beyond it an ETA would pass the year 9999, which no datetime can show.
MAX_SECONDS = 100 * 365 * 86400.0
# The latest instant castor stores: 9999-12-31T23:59:59Z.
MAX_EPOCH = 253402300799.0


def to_seconds(value: float | int | timedelta | None, what: str, *,
               limit: float | None = MAX_SECONDS) -> float | None:
    """Seconds as a float from a number or a timedelta; None stays None.

    limit: the most accepted (None: no bound, infinity included, for waits)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int past a float's range
            seconds = math.inf
    else:
        raise TypeError(f"{what} must be a number of seconds or a timedelta, not {type(value).__name__}")
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"{what} must be zero or more seconds, got {value!r}")
    if limit is not None and seconds > limit:
        if math.isinf(seconds):
            raise ValueError(f"{what} must be a finite number of seconds, not {value!r}")
        raise ValueError(f"{what} must be at most {limit:.0f} seconds (100 years), got {value!r}")
    return seconds


def to_epoch(value: datetime | float | int, what: str) -> float:
    """Unix time from an aware datetime, a naive one (read as local time), or a number,
    between 1970 and the end of 9999."""
    if isinstance(value, datetime):
        try:
            epoch = value.timestamp()
        except (OverflowError, ValueError, OSError) as exc:  # year 1 east of UTC, say
            raise ValueError(f"{what} {value.isoformat()} is not a time castor can store: {exc}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            epoch = float(value)
        except OverflowError:
            epoch = math.inf
        if not math.isfinite(epoch):  # NaN would fail the NOT NULL eta column
            raise ValueError(f"{what} must be a finite Unix timestamp, got {value!r}")
    else:
        raise TypeError(f"{what} must be a datetime or a Unix timestamp, not {type(value).__name__}")
    if not 0 <= epoch <= MAX_EPOCH:
        shown = value.isoformat() if isinstance(value, datetime) else repr(value)
        raise ValueError(f"{what} must be between 1970 and the end of 9999 (a Unix time from 0 to "
                         f"{MAX_EPOCH:.0f}), got {shown}")
    return epoch


def from_epoch(value: float | None) -> datetime | None:
    """An aware UTC datetime for a stored Unix time."""
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(value, tz=timezone.utc)
    except (OverflowError, ValueError, OSError):  # a row written before ETAs were bounded
        return datetime.max.replace(tzinfo=timezone.utc) if value > 0 else datetime.min.replace(tzinfo=timezone.utc)
