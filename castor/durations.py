"""One place that turns user-facing durations and instants into float seconds."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone


def to_seconds(value: float | int | timedelta | None, what: str) -> float | None:
    """Seconds as a float from a number or a timedelta; None stays None."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{what} must be a number of seconds or a timedelta, not {type(value).__name__}")
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"{what} must be zero or more seconds, got {value!r}")
    return seconds


def to_epoch(value: datetime | float | int, what: str) -> float:
    """Unix time from an aware datetime, a naive one (read as local time), or a number."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # NaN would fail the NOT NULL eta column; inf never comes
            raise ValueError(f"{what} must be a finite Unix timestamp, got {value!r}")
        return float(value)
    raise TypeError(f"{what} must be a datetime or a Unix timestamp, not {type(value).__name__}")


def from_epoch(value: float | None) -> datetime | None:
    """An aware UTC datetime for a stored Unix time."""
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)
