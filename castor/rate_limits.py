"""rate_limit=: how fast the fleet starts the tasks of a name or a queue. Pure; no I/O.

A limit is a token bucket: `burst` tokens at most, refilled at `rate` tokens a second,
one taken by each task a claim starts. The bucket is a row of the store, read and
written in the claim's own transaction on the store's clock (castor/store/), so every
worker of every castord on the store draws on the same one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from castor.errors import ConfigurationError

# What a limit is on: a task name (the decorator's rate_limit=) or a queue.
KINDS = ("name", "queue")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}
_SPELLING = re.compile(r"\s*(\d+)\s*/\s*([smh])\s*")
SPELLING_HINT = "N tasks per second, minute or hour, e.g. '20/s', '100/m' or '1000/h'"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`count` tasks per `per` seconds, up to `burst` at once."""

    count: int
    per: float
    burst: int = 1

    @property
    def rate(self) -> float:
        """Tokens a second."""
        return self.count / self.per


def parse_rate_limit(value: Any, where: str, burst: Any = None, *, burst_name: str = "rate_burst",
                     limit_name: str = "rate_limit") -> RateLimit | None:
    """A RateLimit from "N/s", "N/m" or "N/h" (N a positive integer) and a burst (a
    positive integer, default 1: tasks evenly spaced); None stays None."""
    if value is None:
        if burst is not None:
            raise ConfigurationError(f"{where}: {burst_name}= goes with a rate limit; give {limit_name}= too")
        return None
    match = _SPELLING.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) < 1:
        raise ConfigurationError(f"{where}: a rate limit is {SPELLING_HINT}; not {value!r}")
    return RateLimit(int(match.group(1)), _PER[match.group(2)], validate_burst(burst, where, burst_name))


def validate_burst(value: Any, where: str, name: str = "rate_burst") -> int:
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{where}: {name} is how many tasks may start at once after an idle "
                                 f"spell, a positive integer (default 1), not {value!r}")
    return value


def check_bucket(kind: str, name: str, rate: float, burst: int) -> None:
    """What every store refuses before it writes a bucket."""
    if kind not in KINDS:
        raise ConfigurationError(f"a rate limit is on a task name or a queue: kind 'name' or 'queue', not {kind!r}")
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a rate limit needs a {kind} (a non-empty str), not {name!r}")
    if not (rate > 0) or rate == float("inf"):
        raise ConfigurationError(f"a rate limit's rate must be more than 0 tasks a second, not {rate!r}")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ConfigurationError(f"a rate limit's burst must be a positive integer, not {burst!r}")


def refill(tokens: float, updated_at: float, now: float, rate: float, burst: float) -> float:
    """The bucket's tokens at `now` (store clock). A clock that went back (a reboot
    restarts the boot clock) gives a full bucket, never a negative refill."""
    if now < updated_at:
        return float(burst)
    return min(float(burst), tokens + (now - updated_at) * rate)


# How far ahead a claim may book a task's token: a bucket short of a whole token gives
# it anyway when the token comes within this many seconds, and the task gets that
# moment as its start (its started_at; the worker waits for it). So one claim takes
# the next few tasks of a fast limit at once, spaced as the limit says, instead of one
# claim transaction per token (500/s kept 23-118/s that way). Short: a booked task
# holds its worker's slot while it waits.
BOOK_AHEAD_SECONDS = 0.05


def wait_for_token(tokens: float, rate: float) -> float:
    """Seconds until a bucket holding `tokens` has a whole one (0: it has one)."""
    return max(0.0, 1.0 - tokens) / rate


def next_token_at(tokens: float, rate: float, now: float) -> float:
    """When (store clock) a claim can book a token of a bucket holding `tokens` at `now`."""
    return now + max(0.0, wait_for_token(tokens, rate) - BOOK_AHEAD_SECONDS)


class Buckets:
    """The buckets a claim read (in its transaction), as it takes tokens from them.

    Made from the stored rows (kind, name, rate, burst, tokens, updated_at) and the
    store's clock; `changed()` gives the rows to write back, refilled and taken from."""

    def __init__(self, rows: list[tuple[Any, ...]], clock: float):
        self.clock = clock
        self.tokens: dict[tuple[str, str], float] = {}
        self._rates: dict[tuple[str, str], float] = {}
        self._at: dict[tuple[str, str], float] = {}  # the clock each bucket was read at
        self._taken: set[tuple[str, str]] = set()
        self.add(rows, clock)

    def add(self, rows: list[tuple[Any, ...]], clock: float) -> None:
        """More buckets, read (locked) later in the claim at `clock`."""
        for kind, name, rate, burst, tokens, updated_at in rows:
            self.tokens[(kind, name)] = refill(tokens, updated_at, clock, rate, burst)
            self._rates[(kind, name)] = rate
            self._at[(kind, name)] = clock

    def hold(self, key: tuple[str, str]) -> None:
        """No token of this bucket in this claim (another claimer holds it)."""
        self.tokens[key] = float("-inf")
        self._at[key] = self.clock

    def _wait(self, key: tuple[str, str]) -> float:
        return wait_for_token(self.tokens[key], self._rates.get(key, 1.0))

    def keys(self, name: str, queue: str) -> list[tuple[str, str]]:
        """The buckets a task of `name` in `queue` takes from."""
        return [key for key in (("name", name), ("queue", queue)) if key in self.tokens]

    def held(self, kind: str) -> frozenset[str]:
        """The names (or queues) whose next token is too far to book: a claim skips
        their tasks."""
        return frozenset(key[1] for key in self.tokens if key[0] == kind and self._wait(key) > BOOK_AHEAD_SECONDS)

    def take(self, name: str, queue: str) -> float | None:
        """A token from each bucket of a task of `name` in `queue`, if each has one now
        or within BOOK_AHEAD_SECONDS: the seconds (store clock) until the task may start
        (0: now). None: refused, nothing taken."""
        keys = self.keys(name, queue)
        wait = max((self._wait(key) for key in keys), default=0.0)
        if wait > BOOK_AHEAD_SECONDS:
            return None
        for key in keys:
            self.tokens[key] -= 1
            self._taken.add(key)
        return wait

    def choose(self, candidates: list[tuple[Any, str, str]]) -> tuple[list[tuple[Any, float]], bool]:
        """Of candidate tasks (id, name, queue), best first, those that get tokens as
        (id, seconds until it may start), and whether one was refused (a bucket ran dry
        on the way: look again past it)."""
        chosen = [(task_id, wait) for task_id, name, queue in candidates
                  if (wait := self.take(name, queue)) is not None]
        return chosen, len(chosen) < len(candidates)

    def changed(self) -> list[tuple[float, float, str, str]]:
        """(tokens, updated_at, kind, name) of each bucket taken from."""
        return [(self.tokens[key], self._at[key], *key) for key in sorted(self._taken)]


def next_token(rows: list[tuple[Any, ...]], clock: float) -> float | None:
    """The earliest store-clock time a bucket without a whole token gets one (None: all
    have one). Rows as for Buckets."""
    times = [next_token_at(t, rate, clock) for kind, name, rate, burst, tokens, updated_at in rows
             if wait_for_token(t := refill(tokens, updated_at, clock, rate, burst), rate) > BOOK_AHEAD_SECONDS]
    return min(times) if times else None
