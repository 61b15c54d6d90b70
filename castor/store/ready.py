"""Due pending tasks, found by seeks in castor_tasks_ready (schema v5), never by scans.

The index orders pending rows by (mode, isolate, queue, at_once, priority DESC, eta),
then by id. Within one (mode, isolate, queue) that makes two kinds of run:

* the at-once run (at_once = 1): every row is due whatever the wall clock says, and the
  run is already in claim order (best priority, then oldest eta, ties by id): its best
  `limit` rows are its first `limit` entries;
* one ETA run per priority (at_once = 0), in eta order: its due rows (eta <= now) are a
  prefix, and its first row not yet due holds the run's next ETA.

So a claim, `has_due` and `next_due` look at the head of each run of each queue a worker
serves, and merge what they find by (priority DESC, eta, id). SQLite does not jump from
one run to the next by itself (its skip-scan needs ANALYZE statistics), so which queues
and ETA priorities exist is a `Plan`: read from the index by loose index scans, kept
between calls, and checked by every statement that uses it. The check is a few more
seeks: every range between two planned values must be empty. When one is not (a new
queue, an ETA at a new priority), the statement says "stale" and the plan is read again.

Paused queues (castor_pauses, schema v6) get no runs: their rows are never looked at.
The plan lists the paused queues it was read with, and every statement checks that the
set is still the same (one seek in a table of a few rows), so a pause or a resume makes
the plan stale like a new queue does.

Paused task names (kind 'name') are a filter on each run, there only while a name is
paused: a claim steps over a paused name's rows (each one read, never claimed) to the
first row it may take, so a long backlog of a paused name ahead of other names in its
queue costs that queue's claims in proportion. The plan checks the paused names the way
it checks the paused queues.

Rows of a queue the worker does not serve, rows not yet due, and ETA runs of a better
priority with nothing due cost at most one seek each, however many rows they hold.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

READY = "castor_tasks INDEXED BY castor_tasks_ready"
# The index is partial: every query repeats its condition (and names the index).
_PENDING = "status = 'pending'"

# Parameters by number, the same in every statement of a plan (positional binding is
# cheaper than by name, and a claim is in every task's transaction): ?1 mode, ?2 isolate,
# ?3 now, ?4 limit, ?5 owner and ?6 lease (claims only), then the plan's queues and
# priorities from ?7 on.
_SCOPE = f"{_PENDING} AND mode = ?1 AND isolate = ?2"
_FIRST_VALUE = 7

# A plan's statements hold at most this many seeks each (SQLite allows 500 terms in a
# compound SELECT and 1,000 levels of expression); a larger plan runs in several.
CHUNK_TERMS = 60


def _exists(where: str) -> str:
    return f"EXISTS (SELECT 1 FROM {READY} WHERE {where})"


def _between(column: str, low: str | None, high: str | None) -> str:
    """`column` strictly between two parameters (either end open)."""
    terms = ([f"{column} > {low}"] if low else []) + ([f"{column} < {high}"] if high else [])
    return "".join(f" AND {t}" for t in terms)


def _statement(sql: str) -> tuple[str, int]:
    """The SQL and how many parameters it takes (its highest ?N)."""
    return sql, max((int(n) for n in re.findall(r"\?(\d+)", sql)), default=0)


def _pauses_changed(marks: Sequence[str], kind: str = "queue") -> str:
    """True when the paused queues (or task names) are no longer the parameters `marks`."""
    if not marks:
        return f"EXISTS (SELECT 1 FROM castor_pauses WHERE kind = '{kind}')"
    return (f"(EXISTS (SELECT 1 FROM castor_pauses WHERE kind = '{kind}' AND name NOT IN ({', '.join(marks)}))"
            f" OR (SELECT count(*) FROM castor_pauses WHERE kind = '{kind}') != {len(marks)})")


class _Chunk:
    """Part of a plan small enough for one statement: the runs of some queues, and the
    ranges that must be empty for the plan to be whole (its "gaps")."""

    def __init__(self, pauses: str) -> None:
        self.at_once: list[str] = []  # WHERE clauses, one per at-once run
        self.eta: list[str] = []  # WHERE clauses, one per ETA run
        self.gaps: list[str] = [pauses]  # terms true when the plan is stale
        self.pauses = pauses

    @property
    def size(self) -> int:
        return len(self.at_once) + len(self.eta) + len(self.gaps)

    def stale(self) -> str:
        return " OR ".join(self.gaps)

    def arms(self, columns: str) -> list[str]:
        """Per run, its best `limit` due rows."""
        return ([f"SELECT {columns} FROM {READY} WHERE {w} ORDER BY priority DESC, eta LIMIT ?4"
                 for w in self.at_once]
                + [f"SELECT {columns} FROM {READY} WHERE {w} AND eta <= ?3 ORDER BY eta LIMIT ?4"
                   for w in self.eta])

    def best_ids(self) -> str | None:
        """A SELECT of the ids of the best `limit` due rows of these runs."""
        arms = self.arms("priority, eta, id")
        if not arms:
            return None
        if len(arms) == 1:  # one queue with no ETA runs: its at-once run is in claim order
            return self.arms("id")[0]
        union = " UNION ALL ".join(f"SELECT * FROM ({arm})" for arm in arms)
        return f"SELECT id FROM ({union}) ORDER BY priority DESC, eta, id LIMIT ?4"

    def candidates_sql(self) -> str:
        """(priority, eta, id) of each run's best due rows, and a row of NULLs if the plan is stale."""
        arms = [f"SELECT * FROM ({arm})" for arm in self.arms("priority, eta, id")]
        return " UNION ALL ".join([*arms, f"SELECT NULL, NULL, NULL WHERE {self.stale()}"])

    def due_sql(self) -> str:
        """1 if a run has a due row, else 2 if the plan is stale, else 0 (a due row
        known is due whatever the plan misses: the gaps are only looked at for "no")."""
        due = [_exists(w) for w in self.at_once] + [_exists(f"{w} AND eta <= ?3") for w in self.eta]
        # A pause since the plan comes first: a due row of a queue paused meanwhile is not due.
        return (f"SELECT CASE WHEN {self.pauses} THEN 2 WHEN {' OR '.join(due) or '0'} THEN 1 "
                f"WHEN {self.stale()} THEN 2 ELSE 0 END")

    def next_eta_sql(self) -> str:
        arms = [f"SELECT (SELECT eta FROM {READY} WHERE {w} AND eta > ?3 ORDER BY eta LIMIT 1) AS eta"
                for w in self.eta]
        if not arms:
            return f"SELECT NULL, {self.stale()}"
        return f"SELECT min(eta), {self.stale()} FROM ({' UNION ALL '.join(arms)})"


class Plan:
    """The runs a worker of `mode` (set apart to run alone or not) serving `queues` looks
    at: each queue's at-once run and ETA runs, but none of a queue in `paused`. `queues`
    None: every queue there is, which the plan lists (and checks, like the priorities).

    `claim_template` is the claim's UPDATE with `{where}` for the rows to take; it may
    use ?3 (now), ?5 (owner) and ?6 (lease)."""

    def __init__(self, mode: str, isolate: bool, queues: Sequence[str] | None,
                 found_queues: Sequence[str], priorities: Sequence[Sequence[int]], claim_template: str,
                 paused: Sequence[str] = (), paused_names: Sequence[str] = (),
                 held_queues: Sequence[str] = (), held_names: Sequence[str] = ()):
        self.requested = None if queues is None else tuple(queues)
        self.claim_template = claim_template
        self.queues = tuple(found_queues)
        self.priorities = tuple(tuple(p) for p in priorities)  # per queue, best first
        self.paused = frozenset(paused)
        self.mode, self.isolate = mode, int(isolate)
        self._values: list[Any] = []
        self.paused_names = frozenset(paused_names)
        name_marks = [self._value(n) for n in sorted(self.paused_names)]
        self._pauses = (f"({_pauses_changed([self._value(q) for q in sorted(self.paused)])}"
                        f" OR {_pauses_changed(name_marks, 'name')})")
        # Held back by a rate limit for this claim only (no token): skipped as a
        # paused queue or name is, but not part of the check against castor_pauses.
        self.held_queues, self.held_names = frozenset(held_queues), frozenset(held_names)
        name_marks = name_marks + [self._value(n) for n in sorted(self.held_names - self.paused_names)]
        # Only the runs carry it (the gaps look for rows of any name).
        skip_names = f" AND task_name NOT IN ({', '.join(name_marks)})" if name_marks else ""
        self.chunks = [_Chunk(self._pauses)]
        queue_marks = [self._value(q) for q in self.queues]
        if queues is None:
            # No queue filter: between two listed queues (and beyond both ends) there must be none.
            bounds = [None, *queue_marks, None]
            for low, high in zip(bounds, bounds[1:], strict=False):
                self._add("gaps", _exists(_SCOPE + _between("queue", low, high)))
        for name, queue, runs in zip(self.queues, queue_marks, self.priorities, strict=True):
            if name in self.paused or name in self.held_queues:
                continue
            in_queue = f"{_SCOPE} AND queue = {queue}"
            self._add("at_once", f"{in_queue} AND at_once = 1{skip_names}")
            marks = [self._value(p) for p in runs]
            for mark in marks:
                self._add("eta", f"{in_queue} AND at_once = 0 AND priority = {mark}{skip_names}")
            # No ETA run at a priority the plan does not list (priority DESC: best first).
            bounds = [None, *marks, None]
            for high, low in zip(bounds, bounds[1:], strict=False):
                self._add("gaps", _exists(f"{in_queue} AND at_once = 0" + _between("priority", low, high)))
        self.values = tuple(self._values)
        self._candidates = [_statement(c.candidates_sql()) for c in self.chunks]
        self._due = [_statement(c.due_sql()) for c in self.chunks]
        self._next_eta = [_statement(c.next_eta_sql()) for c in self.chunks]
        # The usual plan fits one statement: a claim is then one UPDATE, which takes
        # nothing if the plan is stale (and a second look tells that from "none due").
        one = self.chunks[0]
        best = one.best_ids() if len(self.chunks) == 1 else None
        self._claim = _statement(claim_template.format(
            where=f"id IN ({best}) AND NOT ({one.stale()})")) if best else None
        self._stale = _statement(f"SELECT {one.stale()}") if len(self.chunks) == 1 else None
        self._claim_by_id = claim_template
        # A claim is then one statement (a read after it, when it took nothing).
        self.one_statement = self._claim is not None
        self._held: dict[tuple[frozenset[str], frozenset[str]], Plan] = {}

    def holding(self, queues: frozenset[str], names: frozenset[str]) -> Plan:
        """This plan, but skipping also `queues` and `names` (out of tokens: held back by
        a rate limit). Kept per set, since a limited claim asks for the same few."""
        if not queues and not names:
            return self
        held = self._held.get((queues, names))
        if held is None:
            if len(self._held) >= 64:
                self._held.clear()
            held = self._held[(queues, names)] = Plan(
                self.mode, bool(self.isolate), self.requested, self.queues, self.priorities, self.claim_template,
                sorted(self.paused), sorted(self.paused_names), sorted(queues), sorted(names))
        return held

    def statements(self) -> list[tuple[str, str, int]]:
        """Every statement this plan runs: (what for, SQL, how many parameters). To
        EXPLAIN them: each must seek castor_tasks_ready, never scan."""
        out = [(name, sql, n) for name, group in (("due", self._due), ("next_eta", self._next_eta),
                                                  ("candidates", self._candidates)) for sql, n in group]
        out += [(name, *s) for name, s in (("claim", self._claim), ("stale", self._stale)) if s is not None]
        return out

    def _value(self, value: Any) -> str:
        self._values.append(value)
        return f"?{_FIRST_VALUE + len(self._values) - 1}"

    def _add(self, kind: str, term: str) -> None:
        if self.chunks[-1].size >= CHUNK_TERMS:
            self.chunks.append(_Chunk(self._pauses))
        getattr(self.chunks[-1], kind).append(term)

    @classmethod
    def read(cls, conn: sqlite3.Connection, mode: str, isolate: bool, queues: Sequence[str] | None,
             claim_template: str) -> Plan:
        """The queues and ETA priorities there are now, by loose index scans."""
        scope = (mode, int(isolate))
        found = list(queues) if queues is not None else list(_loose(
            conn, f"SELECT min(queue) FROM {READY} WHERE {_SCOPE}",
            f"SELECT min(queue) FROM {READY} WHERE {_SCOPE} AND queue > ?3", scope))
        paused = [row[0] for row in conn.execute("SELECT name FROM castor_pauses WHERE kind = 'queue'")]
        paused_names = [row[0] for row in conn.execute("SELECT name FROM castor_pauses WHERE kind = 'name'")]
        priorities = [[] if queue in paused else list(_loose(
            conn, f"SELECT max(priority) FROM {READY} WHERE {_SCOPE} AND queue = ?3 AND at_once = 0",
            f"SELECT max(priority) FROM {READY} WHERE {_SCOPE} AND queue = ?3 AND at_once = 0 "
            "AND priority < ?4", (*scope, queue))) for queue in found]
        return cls(mode, isolate, queues, found, priorities, claim_template, paused, paused_names)

    def _params(self, now: float, limit: int = 0, owner: str | None = None,
                lease: float | None = None) -> tuple[Any, ...]:
        return (self.mode, self.isolate, now, limit, owner, lease, *self.values)

    # -- asking --------------------------------------------------------------------
    # Each returns (answer, stale). A stale answer may be wrong: read the plan again.

    def has_due(self, conn: sqlite3.Connection, now: float) -> tuple[bool, bool]:
        params = self._params(now)
        stale = False
        for sql, n in self._due:
            answer = conn.execute(sql, params[:n]).fetchone()[0]
            if answer == 1:
                return True, False
            stale = stale or answer == 2
        return False, stale

    def next_eta(self, conn: sqlite3.Connection, now: float) -> tuple[float | None, bool]:
        params = self._params(now)
        etas, stale = [], False
        for sql, n in self._next_eta:
            eta, s = conn.execute(sql, params[:n]).fetchone()
            stale = stale or bool(s)
            if eta is not None:
                etas.append(eta)
        return (min(etas) if etas else None), stale

    def best(self, conn: sqlite3.Connection, now: float, limit: int) -> tuple[list[str], bool]:
        """The ids of the best `limit` due tasks, best first."""
        params = self._params(now, limit)
        heads: list[tuple[int, float, str]] = []
        stale = False
        for sql, n in self._candidates:
            for row in conn.execute(sql, params[:n]):
                if row[2] is None:
                    stale = True
                else:
                    heads.append(row)
        heads.sort(key=lambda h: (-h[0], h[1], h[2]))
        return [h[2] for h in heads[:limit]], stale

    def claim(self, conn: sqlite3.Connection, now: float, limit: int, owner: str,
              lease: float) -> tuple[list[tuple[Any, ...]], bool]:
        """Lease the best `limit` due tasks to `owner` until `lease` (the claim template's
        RETURNING rows). Inside a write transaction: nobody else claims between the pick
        and the write."""
        if self._claim is not None:
            params = (self.mode, self.isolate, now, limit, owner, lease, *self.values)
            sql, n = self._claim
            rows = conn.execute(sql, params if n == len(params) else params[:n]).fetchall()
            if rows or self._stale is None:
                return rows, False
            sql, n = self._stale
            return [], bool(conn.execute(sql, params[:n]).fetchone()[0])
        ids, stale = self.best(conn, now, limit)
        if stale or not ids:
            return [], stale
        return self.claim_ids(conn, now, ids, owner, lease), False

    def claim_ids(self, conn: sqlite3.Connection, now: float, ids: Sequence[str], owner: str,
                  lease: float) -> list[tuple[Any, ...]]:
        """Lease these pending tasks (picked by best(), in this write transaction)."""
        marks = ", ".join(f"?{_FIRST_VALUE + k}" for k in range(len(ids)))
        sql = self._claim_by_id.format(where=f"id IN ({marks}) AND {_PENDING}")
        return conn.execute(sql, (None, None, now, None, owner, lease, *ids)).fetchall()


def _loose(conn: sqlite3.Connection, first: str, following: str, params: tuple[Any, ...]) -> Iterator[Any]:
    """A loose index scan: the distinct values of one index column, one seek each.
    `following` takes `params` and then the last value found."""
    value = conn.execute(first, params).fetchone()[0]
    while value is not None:
        yield value
        value = conn.execute(following, (*params, value)).fetchone()[0]


# -- counting (castord status, castord tasks stats, metrics) ----------------------------


def scopes(conn: sqlite3.Connection) -> list[tuple[str, int, str]]:
    """Every (mode, isolate, queue) that has pending tasks, by loose index scans."""
    out: list[tuple[str, int, str]] = []
    for mode in _loose(conn, f"SELECT min(mode) FROM {READY} WHERE {_PENDING}",
                       f"SELECT min(mode) FROM {READY} WHERE {_PENDING} AND mode > ?1", ()):
        for isolate in _loose(conn, f"SELECT min(isolate) FROM {READY} WHERE {_PENDING} AND mode = ?1",
                              f"SELECT min(isolate) FROM {READY} WHERE {_PENDING} AND mode = ?1 "
                              "AND isolate > ?2", (mode,)):
            out.extend((mode, isolate, queue) for queue in _loose(
                conn, f"SELECT min(queue) FROM {READY} WHERE {_SCOPE}",
                f"SELECT min(queue) FROM {READY} WHERE {_SCOPE} AND queue > ?3", (mode, isolate)))
    return out


def pending_by_queue(conn: sqlite3.Connection) -> dict[str, int]:
    """Pending tasks per queue: a count over each (mode, isolate, queue)'s entries."""
    counts: dict[str, int] = {}
    for scope in scopes(conn):
        n = conn.execute(f"SELECT count(*) FROM {READY} WHERE {_SCOPE} AND queue = ?3", scope).fetchone()[0]
        counts[scope[2]] = counts.get(scope[2], 0) + n
    return dict(sorted(counts.items()))


def schedule_stats(conn: sqlite3.Connection, now: float) -> tuple[int, float | None]:
    """(pending tasks not yet due, the oldest ETA of a due one): a count over the rows not
    yet due of each ETA run, and one seek per run for its oldest due row."""
    scheduled, oldest = 0, None
    block = f"{_SCOPE} AND queue = ?3 AND at_once = ?4"
    for scope in scopes(conn):
        for at_once in (0, 1):
            params = (*scope, at_once)
            for priority in _loose(conn, f"SELECT max(priority) FROM {READY} WHERE {block}",
                                   f"SELECT max(priority) FROM {READY} WHERE {block} AND priority < ?5", params):
                run = (*params, priority, now)
                due = " AND eta <= ?6" if at_once == 0 else " AND ?6 IS NOT NULL"
                first = conn.execute(f"SELECT eta FROM {READY} WHERE {block} AND priority = ?5{due} "
                                     "ORDER BY eta LIMIT 1", run).fetchone()
                if first is not None and (oldest is None or first[0] < oldest):
                    oldest = first[0]
                if at_once == 0:
                    scheduled += conn.execute(f"SELECT count(*) FROM {READY} WHERE {block} AND priority = ?5 "
                                              "AND eta > ?6", run).fetchone()[0]
    return scheduled, oldest
