"""castor/store/pg_batch.py against a real server: statements written at once read back
exactly as a cursor reads them, a refused statement raises psycopg's error for it, each
statement is prepared once per connection (and not at all with prepare off), and a batch
larger than the socket's buffers or a connection that broke cannot wedge it."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest

psycopg = pytest.importorskip("psycopg")

from psycopg.types.json import Jsonb  # noqa: E402 - after the importorskip

from castor.store.pg_batch import Batch, convert  # noqa: E402
from tests.conftest import wait_until  # noqa: E402


@pytest.fixture
def conn(postgres_db_url: str) -> Iterator[object]:
    with psycopg.connect(postgres_db_url, autocommit=True) as c:
        yield c


def ours(conn: object) -> list[tuple[str, str]]:
    """The prepared statements Batch made on `conn`: (name, statement)."""
    rows = conn.execute("SELECT name, statement FROM pg_prepared_statements WHERE name LIKE 'castor\\_%%'").fetchall()
    return sorted(rows)


VALUES = [
    "text with ünïcode and 'quotes'", b"\x00\xffbytes", 7, 2**40, 1.5, Decimal("1.25"), True, None,
    Jsonb({"a": [1, "b", None]}), [1, 2, 3], uuid.UUID(int=5),
    datetime.datetime(2026, 12, 3, 9, 30, tzinfo=datetime.UTC), datetime.date(2026, 12, 3),
]


def test_rows_read_as_through_a_cursor(conn: object) -> None:
    sql = "SELECT " + ", ".join(["%s"] * len(VALUES))
    expected = conn.execute(sql, VALUES).fetchall()
    batch = Batch(conn)
    first, second = batch.execute(sql, VALUES), batch.execute(sql, VALUES)
    batch.run()
    assert first.fetchall() == expected
    assert second.fetchone() == expected[0]
    assert expected[0][0] == VALUES[0] and expected[0][1] == VALUES[1]  # the cursor's own reading is right


# Arrays as a worker's settles send them (binary, pg_batch._format), each with the cast
# its statement gives it: text with the characters text-format arrays must quote, NULLs
# among values, a NULL-only array cast to another type, an empty one (sent as text).
ARRAYS = [
    ("%s::text[]", ['a,b', 'q"uote', "back\\slash", "{brace}", " space ", "NULL", "", None, "ünï"]),
    ("%s::int8[]", [1, None, 2**40, -5]),
    ("%s::float8[]", [1.5, None, 1e300]),
    ("%s::bool[]", [True, False, None]),
    ("%s::bytea[]", [b"\x00\xff", None, b""]),
    ("%s::jsonb[]", [Jsonb({"a": [1, None]}), None, Jsonb("s")]),
    ("%s::jsonb[]", [None, None]),
    ("%s::float8[]", [None]),
    ("%s::text[]", []),
    ("%s::int8[]", []),
]


def test_arrays_read_back_as_through_a_cursor(conn: object) -> None:
    sql = "SELECT " + ", ".join(cast for cast, _ in ARRAYS)
    values = [value for _, value in ARRAYS]
    expected = conn.execute(sql, values).fetchall()
    batch = Batch(conn)
    result = batch.execute(sql, values)
    any_of = batch.execute("SELECT 'b' = ANY(%s), 'z' = ANY(%s)", [["a", "b"], []])  # no cast: as _NOTIFY_SETTLED's
    batch.run()
    assert result.fetchall() == expected
    assert expected[0][0] == ARRAYS[0][1] and expected[0][4] == ARRAYS[4][1]  # the cursor's own reading is right
    assert any_of.fetchall() == [(True, False)]


def test_a_statement_with_an_empty_or_a_full_list_of_text_is_prepared_once(conn: object) -> None:
    """An empty list is typed text[] like a full one of str (pg_batch._types): one
    prepared form, whichever comes first (a settle's retried ids are mostly empty)."""
    sql = "SELECT count(*) FROM unnest(%s::text[]), (SELECT 'x' = ANY(%s)) AS a(found)"
    for values in ([[], []], [["a", "b"], ["x"]], [[], ["y"]], [["c"], []]):
        batch = Batch(conn)
        result = batch.execute(sql, values)
        batch.run()
        assert result.fetchall() == [(len(values[0]),)]
    assert len(ours(conn)) == 1, ours(conn)


def test_a_list_of_text_without_a_cast_arrives_typed_text_array(conn: object) -> None:
    """The one difference from a cursor (pg_batch._format): a cursor sends a list of
    str untyped, so `SELECT %s` reads back the text '{x,y}'; the batch sends text[]."""
    assert conn.execute("SELECT %s", [["x", "y"]]).fetchall() == [("{x,y}",)]
    batch = Batch(conn)
    result = batch.execute("SELECT %s, pg_typeof(%s)::text", [["x", "y"], ["x"]])
    batch.run()
    assert result.fetchall() == [(["x", "y"], "text[]")]


def test_named_placeholders_a_repeated_name_and_a_literal_percent(conn: object) -> None:
    batch = Batch(conn)
    result = batch.execute("SELECT %(n)s::int + %(n)s::int, %(s)s || '100%%', '%%(n)s'", {"n": 2, "s": "at "})
    batch.run()
    assert result.fetchall() == [(4, "at 100%", "%(n)s")]
    assert convert("SELECT %(n)s, %(m)s, %(n)s")[1:] == (("n", "m"), 2)


def test_rowcount_and_a_statement_without_rows(conn: object) -> None:
    conn.execute("CREATE TABLE t (v int)")
    conn.execute("INSERT INTO t SELECT generate_series(1, 5)")
    batch = Batch(conn)
    updated = batch.execute("UPDATE t SET v = v + 1 WHERE v > %s", (2,))
    batch.run()
    assert updated.rowcount == 3
    with pytest.raises(psycopg.ProgrammingError, match="no rows"):
        updated.fetchall()


@pytest.mark.parametrize(("sql", "params", "error", "message"), [
    ("SELECT %s, %(a)s", {"a": 1}, ValueError, "mixes"),
    ("SELECT %(a)s", (1,), TypeError, "mapping"),
    ("SELECT %s, %s", (1,), TypeError, "takes 2 parameters, 1 given"),
    ("SELECT %(a)s", {"b": 1}, KeyError, "a"),
    ("SELECT %b", (b"x",), ValueError, "not '%b'"),
    ("SELECT %(a)t", {"a": 1}, ValueError, "not '%\\(a\\)t'"),
    ("SELECT 5 % 2", (), ValueError, "not '% '"),
])
def test_bad_calls_are_refused_before_anything_is_sent(conn: object, sql: str, params: object, error: type,
                                                       message: str) -> None:
    batch = Batch(conn)
    with pytest.raises(error, match=message):
        batch.execute(sql, params)
    batch.run()  # nothing queued: nothing sent
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_refused_statement_raises_its_error_and_the_rest_is_skipped(conn: object) -> None:
    conn.execute("CREATE TABLE t (v int)")
    batch = Batch(conn)
    batch.execute("INSERT INTO t VALUES (1)")
    batch.execute("SELECT 1 / %s", (0,))
    after = batch.execute("INSERT INTO t VALUES (2) RETURNING v")
    with pytest.raises(psycopg.errors.DivisionByZero):
        batch.run()
    # The implicit transaction rolled back at the Sync: neither insert stays, the
    # connection is idle and out of pipeline mode, ready for the next statement.
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert conn.pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF
    with pytest.raises(psycopg.ProgrammingError):
        after.fetchall()


def test_a_refused_statement_inside_begin_leaves_the_transaction_failed(conn: object) -> None:
    """What the store's _give_back reads to close the connection rather than pool it."""
    batch = Batch(conn)
    batch.execute("BEGIN")
    batch.execute("SELECT 1 / %s", (0,))
    batch.execute("COMMIT")
    with pytest.raises(psycopg.errors.DivisionByZero):
        batch.run()
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR


def test_each_statement_is_prepared_once_per_connection_and_parameter_types(conn: object) -> None:
    for _ in range(3):
        batch = Batch(conn)
        as_int = batch.execute("SELECT %s", (1,))
        as_text = batch.execute("SELECT %s", ("one",))
        batch.run()
        assert (as_int.fetchone(), as_text.fetchone()) == ((1,), ("one",))
    prepared = ours(conn)
    assert [statement for _, statement in prepared] == ["SELECT $1", "SELECT $1"]  # one per type, not per run
    assert len({name for name, _ in prepared}) == 2


def test_another_connection_prepares_its_own(conn: object, postgres_db_url: str) -> None:
    with psycopg.connect(postgres_db_url, autocommit=True) as other:
        for c in (conn, other):
            batch = Batch(c)
            result = batch.execute("SELECT %s::int * 2", (21,))
            batch.run()
            assert result.fetchone() == (42,)
        assert len(ours(conn)) == 1 and len(ours(other)) == 1


def test_prepare_off_prepares_nothing(conn: object) -> None:
    for _ in range(2):
        batch = Batch(conn, prepare=False)
        result = batch.execute("SELECT %s::text || 'x'", ("a",))
        batch.run()
        assert result.fetchone() == ("ax",)
    assert ours(conn) == []


def test_a_statement_the_server_would_not_prepare_is_prepared_again_next_time(conn: object) -> None:
    """Had its name been kept as prepared, the second run would ask for a statement that
    does not exist (InvalidSqlStatementName) instead of the table's absence."""
    for _ in range(2):
        batch = Batch(conn)
        batch.execute("SELECT v FROM missing WHERE v = %s", (1,))
        with pytest.raises(psycopg.errors.UndefinedTable):
            batch.run()
    conn.execute("CREATE TABLE missing (v int)")
    conn.execute("INSERT INTO missing VALUES (1)")
    batch = Batch(conn)
    found = batch.execute("SELECT v FROM missing WHERE v = %s", (1,))
    batch.run()
    assert found.fetchall() == [(1,)]


def test_a_batch_larger_than_the_socket_buffers(conn: object) -> None:
    """Megabytes each way: written while its answers are read, it cannot wedge."""
    batch = Batch(conn)
    payload = "x" * 2000
    results = [batch.execute("SELECT %s::int, %s::text", (i, payload)) for i in range(3000)]
    batch.run()
    assert [r.fetchone() for r in results] == [(i, payload) for i in range(3000)]


def test_a_connection_that_broke_raises_operational_error(conn: object, postgres_db_url: str) -> None:
    pid = conn.info.backend_pid
    with psycopg.connect(postgres_db_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_until(lambda: admin.execute("SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)",
                                         (pid,)).fetchone()[0], 30, "the backend to end")
    batch = Batch(conn)
    batch.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        batch.run()
    conn.close()  # as the store's session does: left mid-batch, it is never used again
