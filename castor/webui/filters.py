"""The Tasks screen's filter and page, read from a query string or a form.

The bounds are the HTTP API's (castor.web), so both refuse the same input.
Pages go by key, not OFFSET: `after=ENQUEUED_AT:ID` names the last row of the page
before, and the store lists from there on (Store.list(after=...)), so the thousandth
page costs what the first does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from castor.states import TaskStatus
from castor.store import Query
from castor.web import MAX_LIMIT

DEFAULT_LIMIT = 50
STATUSES = tuple(str(s) for s in TaskStatus)


class BadFilter(ValueError):
    """A filter value the dashboard cannot use; the message says which and why."""


@dataclass(frozen=True, slots=True)
class TaskFilter:
    status: TaskStatus | None = None
    name: str | None = None
    queue: str | None = None
    task_id: str | None = None
    limit: int = DEFAULT_LIMIT
    after: tuple[float, str] | None = None  # the key (enqueued_at, id) of the last row of the page before

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> TaskFilter:
        """From ?status=&name=&queue=&id=&limit=&after= (empty means any)."""
        status = (params.get("status") or "").strip() or None
        if status is not None and status not in STATUSES:
            raise BadFilter(f"status {status!r} is not one of {', '.join(STATUSES)}")
        return cls(
            status=TaskStatus(status) if status else None,
            name=_text(params, "name"), queue=_text(params, "queue"), task_id=_text(params, "id"),
            limit=_integer(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
            after=_key(params, "after"),
        )

    @property
    def query(self) -> Query:
        return Query(status=self.status, name=self.name, queue=self.queue, task_id=self.task_id)

    @property
    def active(self) -> bool:
        """Whether any filter narrows the list (bulk actions on "all" say so)."""
        return any(v is not None for v in (self.status, self.name, self.queue, self.task_id))

    def params(self, **changes: object) -> dict[str, str]:
        """The filter as query parameters (empty ones left out), with `changes` applied."""
        values: dict[str, object] = {"status": self.status, "name": self.name, "queue": self.queue,
                                     "id": self.task_id, "limit": self.limit if self.limit != DEFAULT_LIMIT else None,
                                     "after": page_key(self.after), **changes}
        return {k: str(v) for k, v in values.items() if v is not None and v != ""}

    def link(self, **changes: object) -> str:
        """`?status=failed&after=...`: the query string of this filter with `changes`."""
        query = urlencode(self.params(**changes))
        return f"?{query}" if query else ""

    def describe(self) -> str:
        parts = [f"{label} {value}" for label, value in
                 (("status", self.status), ("name", self.name), ("queue", self.queue), ("id", self.task_id))
                 if value is not None]
        return ", ".join(parts) or "every task"


def _text(params: Mapping[str, str], key: str) -> str | None:
    value = (params.get(key) or "").strip()
    return value or None


def _integer(params: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    text = (params.get(key) or "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadFilter(f"{key} must be a whole number, not {text[:40]!r}") from None
    if not low <= value <= high:
        raise BadFilter(f"{key} must be between {low} and {high:,}, not {value:,}")
    return value


def page_key(key: tuple[float, str] | None) -> str | None:
    """A row's key as the `after` parameter: repr() gives the float back exactly."""
    return None if key is None else f"{key[0]!r}:{key[1]}"


def _key(params: Mapping[str, str], name: str) -> tuple[float, str] | None:
    text = (params.get(name) or "").strip()
    if not text:
        return None
    at, sep, task_id = text.partition(":")
    try:
        when = float(at)
    except ValueError:
        when = float("nan")
    if not sep or not task_id or when != when or when in (float("inf"), float("-inf")):
        raise BadFilter(f"{name} must be a page key ENQUEUED_AT:ID (as the older link gives it), "
                        f"not {text[:60]!r}")
    return when, task_id
