"""The Tasks screen's filter and page, read from a query string or a form.

The bounds are the HTTP API's (castor.web), so both refuse the same input.
Pages go by key, not OFFSET: `after=ENQUEUED_AT:ID` names the last row of the page
before, and the store lists from there on (Store.list(after=...)), so the thousandth
page costs what the first does; `before=` (the first row of the page after) steps back
to the newer page.

Times are UTC, as the page shows them, in the form an <input type="datetime-local">
sends (2026-12-01T10:30, seconds optional); an offset (+02:00) is honoured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

from castor.states import TaskStatus
from castor.store import Query
from castor.web import MAX_LIMIT

DEFAULT_LIMIT = 50
MAX_SEARCH = 200  # characters of an argument search
STATUSES = tuple(str(s) for s in TaskStatus)


class BadFilter(ValueError):
    """A filter value the dashboard cannot use; the message says which and why."""


@dataclass(frozen=True, slots=True)
class TaskFilter:
    status: TaskStatus | None = None
    name: str | None = None
    queue: str | None = None
    task_id: str | None = None
    # Enqueued or finished in [from, to): epoch seconds. Enqueued answers "what came in
    # during the incident", finished "what failed last night between 2 and 3".
    enqueued_from: float | None = None
    enqueued_to: float | None = None
    finished_from: float | None = None
    finished_to: float | None = None
    args: str | None = None  # a literal substring of the arguments as stored (JSON text)
    limit: int = DEFAULT_LIMIT
    after: tuple[float, str] | None = None  # the key (enqueued_at, id) of the last row of the page before
    before: tuple[float, str] | None = None  # the key of the first row of the page after (newer)

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> TaskFilter:
        """From ?status=&name=&queue=&id=&args=&enqueued_from=&enqueued_to=&finished_from=
        &finished_to=&limit=&after=|before= (empty means any)."""
        status = (params.get("status") or "").strip() or None
        if status is not None and status not in STATUSES:
            raise BadFilter(f"status {status!r} is not one of {', '.join(STATUSES)}")
        after, before = _key(params, "after"), _key(params, "before")
        if after is not None and before is not None:
            raise BadFilter("a page goes from one key: after= (older) or before= (newer), not both")
        parsed = cls(
            status=TaskStatus(status) if status else None,
            name=_text(params, "name"), queue=_text(params, "queue"), task_id=_text(params, "id"),
            enqueued_from=_time(params, "enqueued_from"), enqueued_to=_time(params, "enqueued_to"),
            finished_from=_time(params, "finished_from"), finished_to=_time(params, "finished_to"),
            args=_search(params, "args"),
            limit=_integer(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
            after=after, before=before,
        )
        for low, high, what in ((parsed.enqueued_from, parsed.enqueued_to, "enqueued"),
                                (parsed.finished_from, parsed.finished_to, "finished")):
            if low is not None and high is not None and high <= low:
                raise BadFilter(f"{what} to must be later than {what} from")
        return parsed

    @property
    def query(self) -> Query:
        return Query(status=self.status, name=self.name, queue=self.queue, task_id=self.task_id,
                     enqueued_after=self.enqueued_from, enqueued_before=self.enqueued_to,
                     finished_after=self.finished_from, finished_before=self.finished_to,
                     args_contains=self.args)

    def _narrowing(self) -> tuple[object, ...]:
        return (self.status, self.name, self.queue, self.task_id, self.enqueued_from, self.enqueued_to,
                self.finished_from, self.finished_to, self.args)

    @property
    def active(self) -> bool:
        """Whether any filter narrows the list (bulk actions on "all" say so)."""
        return any(v is not None for v in self._narrowing())

    @property
    def paged(self) -> bool:
        """Whether this is a page other than the newest."""
        return self.after is not None or self.before is not None

    def params(self, **changes: object) -> dict[str, str]:
        """The filter as query parameters (empty ones left out), with `changes` applied."""
        values: dict[str, object] = {
            "status": self.status, "name": self.name, "queue": self.queue, "id": self.task_id,
            "args": self.args,
            "enqueued_from": time_text(self.enqueued_from), "enqueued_to": time_text(self.enqueued_to),
            "finished_from": time_text(self.finished_from), "finished_to": time_text(self.finished_to),
            "limit": self.limit if self.limit != DEFAULT_LIMIT else None,
            "after": page_key(self.after), "before": page_key(self.before), **changes}
        return {k: str(v) for k, v in values.items() if v is not None and v != ""}

    def link(self, **changes: object) -> str:
        """`?status=failed&after=...`: the query string of this filter with `changes`."""
        query = urlencode(self.params(**changes))
        return f"?{query}" if query else ""

    def describe(self) -> str:
        parts = [f"{label} {value}" for label, value in
                 (("status", self.status), ("name", self.name), ("queue", self.queue), ("id", self.task_id),
                  ("arguments containing", None if self.args is None else repr(self.args)))
                 if value is not None]
        for what, low, high in (("enqueued", self.enqueued_from, self.enqueued_to),
                                ("finished", self.finished_from, self.finished_to)):
            if low is not None or high is not None:
                parts.append(f"{what} {_span(low, high)}")
        return ", ".join(parts) or "every task"


def _span(low: float | None, high: float | None) -> str:
    shown = [f"from {time_text(low, ' ')} UTC" if low is not None else "",
             f"before {time_text(high, ' ')} UTC" if high is not None else ""]
    return " ".join(p for p in shown if p)


def time_text(at: float | None, sep: str = "T") -> str | None:
    """An epoch time as the datetime-local input shows it (UTC, to the second)."""
    return None if at is None else datetime.fromtimestamp(at, UTC).strftime(f"%Y-%m-%d{sep}%H:%M:%S")


def _time(params: Mapping[str, str], key: str) -> float | None:
    text = (params.get(key) or "").strip()
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadFilter(f"{key} must be a UTC date and time like 2026-12-01T10:30, not {text[:40]!r}") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _search(params: Mapping[str, str], key: str) -> str | None:
    # Not stripped: a leading or trailing space may be what one searches for.
    value = params.get(key) or ""
    if len(value) > MAX_SEARCH:
        raise BadFilter(f"{key} is at most {MAX_SEARCH} characters, not {len(value):,}")
    return value or None


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
        raise BadFilter(f"{name} must be a page key ENQUEUED_AT:ID (as the older and newer links give it), "
                        f"not {text[:60]!r}")
    return when, task_id
