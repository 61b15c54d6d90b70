"""libpq's trace of every connection a PostgreSQL store opens: what it sent, as
transactions of SQL statements (tests of which round trips and commits the store makes)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

# A frontend message in libpq's trace: "F <length> Parse "<name>" "<sql>" <n>", or Query.
MESSAGE = re.compile(r"^(?=[FB]\t\d+\t)", re.MULTILINE)
# A frontend message the client then waits on the server for: a Sync, or a simple Query.
SYNC = re.compile(r"^F\t\d+\t(?:Sync|Query)\b", re.MULTILINE)


class TracedStore:
    """A PostgreSQL store whose every connection writes libpq's trace to a file of its own
    (statements unprepared, so that each one's text is in the trace)."""

    def __init__(self, store: Any, trace_dir: Path):
        self.store = store  # opened with castor_prepare=off: each statement's text is in the trace
        self._dir = trace_dir
        self._files: list[Any] = []
        connect = self.store._connect  # noqa: SLF001 - the seam every connection comes through

        def traced(*args: Any, **kwargs: Any) -> Any:
            conn = connect(*args, **kwargs)
            f = open(trace_dir / f"conn{len(self._files)}.trace", "w")  # noqa: SIM115 - closed in close()
            self._files.append(f)
            conn.pgconn.trace(f.fileno())
            conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
            return conn

        self.store._connect = traced  # type: ignore[method-assign]  # noqa: SLF001
        self.store._drop_idle()  # noqa: SLF001 - none opened before the trace

    def transactions(self, during: Callable[[], Any]) -> list[list[str]]:
        """The transactions `during()` ran, each as its statements: a BEGIN ... COMMIT
        block, a simple Query, or the statements sent outside a block up to a Sync (the
        extended protocol's implicit transaction: one statement, or a pipeline's run)."""
        found: list[list[str]] = []
        for text in self._traced(during):
            statements = [_statement(m) for m in MESSAGE.split(text)]
            found.extend(_group([s for s in statements if s is not None]))
        return found

    def round_trips(self, during: Callable[[], Any]) -> int:
        """How many times `during()` waited for the server: each Sync (the end of an
        extended-protocol exchange or of a pipeline's batch) and each simple Query."""
        return sum(len(SYNC.findall(text)) for text in self._traced(during))

    def _traced(self, during: Callable[[], Any]) -> list[str]:
        """What each connection's trace gained while `during()` ran."""
        for f in self._files:
            f.flush()
        before = {p: p.stat().st_size for p in self._dir.glob("*.trace")}
        during()
        for f in self._files:
            f.flush()
        return [path.read_text()[before.get(path, 0):] for path in sorted(self._dir.glob("*.trace"))]

    def close(self) -> None:
        self.store.close()
        for f in self._files:
            f.close()


# In what _statement gives: a simple Query's SQL starts with this (it ends its own
# transaction), a Sync is this alone.
QUERY, SYNCED = "\x00query\x00", "\x00sync\x00"


def _statement(message: str) -> str | None:
    """The SQL of a Parse (or QUERY + the SQL of a Query) sent to the server; SYNCED for a Sync."""
    if re.match(r"F\t\d+\tSync\b", message):
        return SYNCED
    head = re.match(r'F\t\d+\t(?:(Parse)\t "[^"]*" "|Query\t ")', message)
    if head is None:
        return None
    sql = message[head.end():].strip().rsplit('"', 1)[0].strip()
    return sql if head.group(1) else QUERY + sql


def _group(statements: list[str]) -> Iterator[list[str]]:
    block: list[str] | None = None  # inside BEGIN ... COMMIT
    implicit: list[str] = []  # sent outside a block since the last Sync
    for sql in statements:
        simple = sql.startswith(QUERY)
        sql = sql.removeprefix(QUERY)
        word = sql.split(None, 1)[0].upper() if sql and sql != SYNCED else ""
        if sql == SYNCED:
            if block is None and implicit:
                yield implicit
                implicit = []
        elif word == "BEGIN":
            block = []
        elif word in ("COMMIT", "ROLLBACK") and block is not None:
            yield block
            block = None
        elif block is not None:
            block.append(sql)
        elif simple:
            yield [sql]
        else:
            implicit.append(sql)
    if implicit:
        yield implicit


def unprepared(url: str) -> str:
    """The URL with castor's prepared statements off (their text is then in every trace)."""
    return url + ("&" if "?" in url else "?") + "castor_prepare=off"
