"""Statements sent to PostgreSQL in one write and answered in one read.

A worker's exchange (its settles, their notifications, the next claim: up to eight
statements) and a joiner's watch are one round trip each. psycopg's pipeline mode makes
them one round trip, but it sends each statement as it is queued: a poll and a send per
statement, and the server's backend wakes for each. Measured here (2 cores, a local
socket): eight small statements cost 167 µs of client CPU and 195 µs of wall time that
way, 36 µs and 87 µs written together. On the latency path (delay -> claim -> settle ->
join) that difference is paid several times per task, on the cores the task needs.

So `Batch` queues castor's own statements on libpq's pipeline (psycopg.pq, psycopg's
documented libpq wrapper), writes them with their Sync at once, and reads every result
back. What a cursor does is kept: the SQL keeps psycopg's placeholders (`%s`,
`%(name)s`), values are dumped and rows loaded by psycopg's adapters (the connection's
Transformer), so a value reads and writes as through a cursor, but for one thing: a
non-empty list goes in binary (`_format`), typed, so a list of str is text[] where a
cursor leaves it untyped, and an empty list is typed text[] too (`_types`; castor's
statements cast each array or compare it with text, so the server reads the same
values either way); a statement the
server refused raises psycopg's error for it (the ones after it, skipped by the server
up to the Sync, raise nothing more); a broken connection raises psycopg.OperationalError.
With `prepare`, each statement is prepared on the connection in the same write as its
first run (PostgreSQL then plans it as a prepared statement: custom plans first, a
generic one once that is no worse); `castor_prepare=off` (a pooler in transaction mode)
sends each unnamed.

A batch that did not finish (an interrupt, a lost connection) leaves its connection in
pipeline mode: the caller's session closes it rather than pooling it (it is not idle).
"""

from __future__ import annotations

import re
import select
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import OperationalError, errors, pq
from psycopg.adapt import PyFormat, Transformer

# A placeholder, a literal %, or any other % (refused, as a cursor refuses it).
_PLACEHOLDER = re.compile(r"%(?:\((\w+)\))?s|%%|%(?:\(\w+\))?.?")
# Converted texts are castor's own statements (a bounded set); kept up to this many.
_CONVERTED_LIMIT = 512
_converted: dict[str, tuple[bytes, tuple[str, ...] | None, int]] = {}
_OK = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY)


class _Prepared(dict[tuple[bytes, tuple[int, ...]], bytes]):
    """A connection's prepared statements: (query, parameter types) -> name."""

    def __init__(self) -> None:
        super().__init__()
        self.made = 0  # names are never reused: a failed PREPARE's name is left behind

    def new_name(self) -> bytes:
        self.made += 1
        return f"castor_{self.made}".encode()


_prepared: weakref.WeakKeyDictionary[Any, _Prepared] = weakref.WeakKeyDictionary()


def convert(sql: str) -> tuple[bytes, tuple[str, ...] | None, int]:
    """psycopg's placeholders to PostgreSQL's: the query, the names in $n order (None
    for positional %s), and how many parameters. A name used twice is one parameter."""
    hit = _converted.get(sql)
    if hit is not None:
        return hit
    names: dict[str, int] = {}
    positional = 0

    def number(match: re.Match[str]) -> str:
        nonlocal positional
        text = match.group(0)
        if text == "%%":
            return "%"
        if not text.endswith("s"):
            raise ValueError(f"only %s, %(name)s and %% are allowed in a batch's statement, not {text!r}")
        name = match.group(1)
        if name is None:
            positional += 1
            return f"${positional}"
        if name not in names:
            names[name] = len(names) + 1
        return f"${names[name]}"

    query = _PLACEHOLDER.sub(number, sql)
    if names and positional:
        raise ValueError("a statement mixes %s and %(name)s placeholders")
    converted = (query.encode(), tuple(names) if names else None, len(names) or positional)
    if len(_converted) >= _CONVERTED_LIMIT:
        _converted.clear()
    _converted[sql] = converted
    return converted


class Result:
    """One statement's answer, read like a cursor's once the batch has run."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self) -> None:
        self._rows: list[tuple[Any, ...]] | None = None
        self.rowcount = -1

    def fetchall(self) -> list[tuple[Any, ...]]:
        if self._rows is None:
            raise errors.ProgrammingError("the statement returned no rows (or its batch did not run)")
        return self._rows

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = self.fetchall()
        return rows[0] if rows else None


class Batch:
    """Statements queued by `execute` (as on a cursor), sent and answered by `run`."""

    def __init__(self, conn: Any, *, prepare: bool = True) -> None:
        self._conn = conn
        self._prepare = prepare
        self._queued: list[tuple[bytes, Sequence[Any], Result]] = []

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> Result:
        query, names, count = convert(sql)
        if names is not None:
            if not isinstance(params, Mapping):
                raise TypeError("a statement with %(name)s placeholders takes a mapping")
            values: Sequence[Any] = [params[name] for name in names]
        else:
            values = () if params is None else list(params)  # type: ignore[arg-type]
            if len(values) != count:
                raise TypeError(f"the statement takes {count} parameters, {len(values)} given")
        result = Result()
        self._queued.append((query, values, result))
        return result

    def run(self) -> None:
        """Send every queued statement and the Sync in one write; read every answer."""
        if not self._queued:
            return
        conn = self._conn
        pgconn = conn.pgconn
        tx = Transformer(conn)
        prepared = None
        if self._prepare and (prepared := _prepared.get(conn)) is None:
            prepared = _prepared[conn] = _Prepared()
        # Per command sent: the Result to fill (None for a PREPARE), and for a PREPARE the
        # key to forget unless the server accepted it.
        expect: list[tuple[Result | None, tuple[bytes, tuple[int, ...]] | None]] = []
        pgconn.enter_pipeline_mode()
        for query, values, result in self._queued:
            dumped = tx.dump_sequence(values, [_format(v) for v in values])
            types, formats = _types(values, tx.types or ()), list(tx.formats or ())
            if prepared is None:
                pgconn.send_query_params(query, dumped, param_types=types, param_formats=formats)
                expect.append((result, None))
                continue
            key = (query, types)
            name = prepared.get(key)
            if name is None:
                name = prepared.new_name()
                pgconn.send_prepare(name, query, param_types=types)
                expect.append((None, key))
                prepared[key] = name  # taken back below unless the server accepts it
            pgconn.send_query_prepared(name, dumped, param_formats=formats)
            expect.append((result, None))
        pgconn.pipeline_sync()
        answers = _exchange(pgconn)
        pgconn.exit_pipeline_mode()
        failure: BaseException | None = None
        for (filling, preparing), answer in zip(expect, answers, strict=True):
            status = answer.status
            if status not in _OK:
                if preparing is not None and prepared is not None:
                    prepared.pop(preparing, None)  # never prepared: prepare it again next time
                if failure is None and status == pq.ExecStatus.FATAL_ERROR:
                    failure = errors.error_from_result(answer, encoding=conn.info.encoding)
                continue
            if filling is None:
                continue  # a PREPARE's
            filling.rowcount = answer.command_tuples if answer.command_tuples is not None else -1
            if status == pq.ExecStatus.TUPLES_OK:
                tx.set_pgresult(answer)
                filling._rows = tx.load_rows(0, answer.ntuples, tuple)  # noqa: SLF001 - ours
        self._queued = []
        if failure is not None:
            raise failure


def _format(value: Any) -> PyFormat:
    """A list in binary: psycopg's text format quotes each element with a regex search
    (a settle batch of 38: ~500 µs of client CPU in text, ~110 µs in binary; a
    worker's settles and claims send up to nine arrays). The server reads the same
    array either way. An empty list has no element to dump in binary: text '{}' (and
    typed by _types)."""
    return PyFormat.BINARY if type(value) is list and value else PyFormat.AUTO


_TEXT_ARRAY = 1009  # text[]'s oid: what psycopg sends a non-empty list of str as, in binary


def _types(values: Sequence[Any], types: Sequence[int]) -> tuple[int, ...]:
    """The parameter types to send. psycopg leaves an empty list untyped ('{}', oid 0),
    where a non-empty list of str goes as text[]: a statement would then be prepared
    twice, once per shape (a settle's retried ids are mostly empty). Typed text[], an
    empty list keeps the statement one prepared form; the statements cast their arrays."""
    if not any(type(v) is list and not v for v in values):
        return tuple(types)
    return tuple(_TEXT_ARRAY if type(v) is list and not v else t for v, t in zip(values, types, strict=True))


def _exchange(pgconn: Any) -> list[Any]:
    """Write what libpq holds, then read answers up to the Sync's: one PGresult per
    command sent (a skipped one reads PIPELINE_ABORTED). Reads while it writes, so a
    batch larger than the socket's buffers cannot wedge against the server's answers."""
    fd = pgconn.socket
    poller = select.poll()
    answers: list[Any] = []
    writing = True
    while True:
        if writing:
            writing = bool(pgconn.flush())
        poller.register(fd, select.POLLIN | (select.POLLOUT if writing else 0))
        ready = poller.poll()  # blocks without holding the GIL
        events = ready[0][1] if ready else 0
        if events & (select.POLLERR | select.POLLNVAL):
            raise OperationalError("the connection to PostgreSQL broke during a batch")
        if not events & (select.POLLIN | select.POLLHUP):
            continue
        pgconn.consume_input()  # raises OperationalError on a lost connection
        while not pgconn.is_busy():
            answer = pgconn.get_result()
            if answer is None:
                continue  # between one command's results and the next one's
            if answer.status == pq.ExecStatus.PIPELINE_SYNC:
                return answers
            answers.append(answer)
