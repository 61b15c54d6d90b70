"""concurrency=: how many tasks of a name (or of one key of it) the fleet runs at once.
Pure; no I/O.

A limited task's row carries its key (computed by the producer at enqueue: the value of
the `concurrency_key=` argument, or what its function returns; "" for a name limited as
a whole). The name's limit is a row of the store, which every worker writes as it starts
(the newest deploy's code wins, as for rate limits). A claim counts the running tasks of
each group it would start one of, in its own transaction, and starts a task only while
its group has a free slot: a task ends its hold on the slot by leaving `running`, by
whatever path (settle, retry, lost worker, cancel, lease recovery).
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from castor.errors import ConfigurationError

# The key of a task whose name is limited as a whole (no concurrency_key=).
UNKEYED = ""

# (task name, key): the tasks one slot count is for; key UNKEYED for a whole name.
Group = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ConcurrencyLimit:
    """At most `limit` running; per value of `key_of` if it is given."""

    limit: int
    key: Callable[[tuple[Any, ...], dict[str, Any]], Any] | None = None
    # What the key is, for messages: the argument's name or the function's.
    described: str = ""

    @property
    def per_key(self) -> bool:
        return self.key is not None

    def key_of(self, args: tuple[Any, ...], kwargs: dict[str, Any], where: str) -> str:
        """The row's key for a call with these arguments (enqueue time)."""
        if self.key is None:
            return UNKEYED
        value = self.key(args, kwargs)
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ConfigurationError(f"{where}: concurrency_key ({self.described}) gave {value!r}; a key is a "
                                     "str (or an int), e.g. a customer id")
        return str(value)


def parse_concurrency(fn: Callable[..., Any], concurrency: Any, key: Any, where: str) -> ConcurrencyLimit | None:
    """The decorator's concurrency= (a positive int) and concurrency_key= (the name of one
    of `fn`'s arguments, or a function of the call's arguments returning a str); with a
    key, concurrency= is the limit per key value (default 1)."""
    if concurrency is None and key is None:
        return None
    limit = 1 if concurrency is None else concurrency
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"{where}: concurrency is how many of its tasks may run at once across the "
                                 f"fleet, a positive integer, not {concurrency!r}")
    if key is None:
        return ConcurrencyLimit(limit)
    if isinstance(key, str):
        return ConcurrencyLimit(limit, _argument_key(fn, key, where), f"argument {key!r}")
    if callable(key):
        return ConcurrencyLimit(limit, lambda args, kwargs: key(*args, **kwargs),
                                f"{getattr(key, '__qualname__', key)!r}")
    raise ConfigurationError(f"{where}: concurrency_key is the name of one of the function's arguments "
                             f"(e.g. 'customer_id') or a function of its arguments returning a str, not {key!r}")


def _argument_key(fn: Callable[..., Any], name: str, where: str) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
    """A function of a call's (args, kwargs) giving the value of `fn`'s argument `name`
    (its default when the call leaves it out)."""
    signature = inspect.signature(fn)
    named = [p.name for p in signature.parameters.values()
             if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if name not in named:
        close = difflib.get_close_matches(name, named, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigurationError(f"{where}: concurrency_key={name!r} is not an argument of the function "
                                 f"(its arguments: {', '.join(named) or 'none'}).{hint} Give the name of an "
                                 "argument, or a function of the arguments that returns the key")

    def key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ConfigurationError(f"{where}: the call's arguments do not fit the function ({exc}), so its "
                                     f"concurrency key {name!r} cannot be read") from None
        bound.apply_defaults()
        return bound.arguments[name]

    return key


def check_limit(name: Any, limit: Any) -> None:
    """What every store refuses before it writes a limit."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a concurrency limit needs a task name (a non-empty str), not {name!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"a concurrency limit must be a positive integer, not {limit!r}")


def lock_key(group: Group) -> int:
    """A group's number, the same in every process (for a lock named after it)."""
    digest = hashlib.blake2b(f"castor.concurrency\0{group[0]}\0{group[1]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Slots:
    """The limits a claim read (rows of name, limit, per_key) and the running tasks of
    their groups, as the claim takes slots."""

    def __init__(self, limits: Iterable[tuple[str, int, Any]]):
        self.limits = {name: (int(limit), bool(per_key)) for name, limit, per_key in limits}
        self.running: dict[Group, int] = {}
        self._held: set[Group] = set()

    def group(self, name: str, key: str | None) -> Group | None:
        """A task's group; None if it is not limited: its name has no limit, or it was
        enqueued by code that declared none (no key on its row)."""
        limit = self.limits.get(name)
        if limit is None or key is None:
            return None
        return (name, key if limit[1] else UNKEYED)

    def count(self, rows: Iterable[tuple[str, str, int]]) -> None:
        """Add running tasks, as (name, key, how many) rows."""
        for name, key, n in rows:
            group = self.group(name, key)
            if group is not None:
                self.running[group] = self.running.get(group, 0) + n

    def recount(self, counts: dict[Group, int]) -> None:
        """Set these groups' running tasks (counted afresh, under their locks)."""
        self.running.update(counts)

    def hold(self, group: Group) -> None:
        """Take no task of `group` in this claim (another claimer holds its lock)."""
        self._held.add(group)

    def free(self, group: Group) -> bool:
        return group not in self._held and self.running.get(group, 0) < self.limits[group[0]][0]

    def take(self, group: Group) -> None:
        self.running[group] = self.running.get(group, 0) + 1

    def full(self) -> list[Group]:
        """The groups a claim skips: no free slot."""
        groups = set(self._held) | {g for g in self.running if not self.free(g)}
        return sorted(groups)

    def full_names(self) -> frozenset[str]:
        """The names limited as a whole that have no free slot (skipped like a paused name)."""
        return frozenset(name for name, key in self.full() if not self.limits[name][1])

    def full_keys(self) -> list[Group]:
        """The groups of names limited per key that have no free slot."""
        return [(name, key) for name, key in self.full() if self.limits[name][1]]


def choose(candidates: Iterable[tuple[Any, str, str, str | None]], slots: Slots,
           take_token: Callable[[str, str], float | None], want: int) -> tuple[list[tuple[Any, float]], bool]:
    """Of candidate tasks (id, name, queue, key), best first, those (at most `want`)
    that get a slot of their group and the tokens of their rate limits
    (`take_token(name, queue)`, which takes them and says in how many seconds the task
    may start, None if it may not), as (id, seconds until it may start), and whether
    one was refused (look again past it). A task refused takes neither."""
    chosen: list[tuple[Any, float]] = []
    refused = False
    for task_id, name, queue, key in candidates:
        if len(chosen) >= want:
            break
        group = slots.group(name, key)
        if group is not None and not slots.free(group):
            refused = True
            continue
        wait = take_token(name, queue)
        if wait is None:
            refused = True
            continue
        if group is not None:
            slots.take(group)
        chosen.append((task_id, wait))
    return chosen, refused


def concurrency_report(limits: Iterable[tuple[Any, ...]],
                       running: Iterable[tuple[str, str, int]]) -> dict[str, dict[str, Any]]:
    """What Store.concurrency_limits() says, from the limit rows and the running limited
    tasks by (name, key, count): {name: {"limit", "per_key", "running" (every key)}}."""
    counts: dict[str, int] = {}
    for name, _key, n in running:
        counts[name] = counts.get(name, 0) + n
    return {name: {"limit": limit, "per_key": bool(per_key), "running": counts.get(name, 0)}
            for name, limit, per_key in sorted(limits)}
