"""castor.web: the FastAPI router over a real beaver-db file, and examples/fastapi_app,
through FastAPI's test client; workers run in-process (stepped, or in a thread)."""

from __future__ import annotations

import importlib
import math
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.testclient import TestClient

import castor
import castor.web
from castor import Worker
from castor.task import CALL_OPTIONS
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


def define_tasks(manager: castor.Manager) -> None:
    @manager.task(mode="thread", name="add")
    def add(a, b):
        """Add two numbers.

        More text that the types endpoint leaves out."""
        return a + b

    @manager.task(mode="thread", name="fail")
    def fail(message):
        raise ValueError(message)

    @manager.task(mode="process", name="resize", validate=True, queue="images", priority=3, daemon=True)
    def resize(width: int, height: int) -> str:
        return f"{width}x{height}"

    @manager.task(mode="thread", name="not_a_number")
    def not_a_number():
        return math.nan

    @manager.task(mode="thread", name="patient")
    def patient():
        while not castor.cancelled():  # runs until cancelled
            time.sleep(0.005)

    @manager.periodic(every=60, mode="thread", name="tick", retries=2)
    def tick():
        return "tock"


@pytest.fixture
def manager(db_path: str) -> Iterator[castor.Manager]:
    m = castor.Manager(db_path)
    define_tasks(m)
    yield m
    m.close()


def make_client(manager: castor.Manager, **options) -> TestClient:
    app = FastAPI()
    app.include_router(castor.web.router(manager, **options))
    return TestClient(app)


@pytest.fixture
def client(manager: castor.Manager) -> TestClient:
    return make_client(manager)


def submit(client: TestClient, name: str, *args, prefix: str = "/tasks", **body) -> str:
    response = client.post(prefix, json={"name": name, "args": list(args), **body})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def drain(manager: castor.Manager, mode: str = "thread") -> None:
    Worker(manager, mode=mode).run(until_idle=True)


class BackgroundWorker:
    """A thread worker running in this process until the test ends."""

    def __init__(self, manager: castor.Manager, mode: str = "thread"):
        self.worker = Worker(manager, mode=mode, threads=2)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self) -> Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()


# -- submit, then get ---------------------------------------------------------------


def test_submitted_task_runs_and_get_shows_its_result(client, manager):
    response = client.post("/tasks", json={"name": "add", "args": [2], "kwargs": {"b": 3}})
    assert response.status_code == 202
    body = response.json()
    assert body["name"] == "add" and body["status"] == "pending"
    assert response.headers["location"] == body["url"] == f"/tasks/{body['id']}"

    pending = client.get(body["url"]).json()
    assert pending["status"] == "pending" and pending["result"] is None and pending["attempts"] == 0
    assert pending["started_at"] is None and pending["mode"] == "thread" and pending["queue"] == "default"

    drain(manager)
    done = client.get(body["url"])
    assert done.status_code == 200
    task = done.json()
    assert task["status"] == "success" and task["result"] == 5 and task["result_repr"] is None
    assert task["attempts"] == 1 and task["error"] is None and task["history"] == []
    enqueued, started, finished = (datetime.fromisoformat(task[k]) for k in
                                   ("enqueued_at", "started_at", "finished_at"))
    assert enqueued <= started <= finished and finished.tzinfo is not None
    assert manager.get(body["id"]).join(timeout=1) == 5  # the same task the library sees


def test_a_background_worker_finishes_what_http_submitted(client, manager):
    with BackgroundWorker(manager):
        ids = [submit(client, "add", i, i) for i in range(5)]
        wait_until(lambda: all(client.get(f"/tasks/{i}").json()["status"] == "success" for i in ids),
                   20, "five tasks to succeed")
    assert [client.get(f"/tasks/{i}").json()["result"] for i in ids] == [0, 2, 4, 6, 8]


def test_submit_with_call_options(client, manager):
    before = time.time()
    task_id = submit(client, "add", 1, 2, priority=7, queue="reports", countdown=3600, task_id="report-1",
                     retries=2, retry_delay=0.5, timeout=30, result_ttl=60)
    assert task_id == "report-1"
    record = manager.store.get(task_id)
    assert record.priority == 7 and record.queue == "reports" and record.eta >= before + 3600
    assert record.options["retries"] == 2 and record.options["timeout"] == 30
    assert record.options["result_ttl"] == 60 and record.options["retry_delay"] == 0.5

    at = datetime.now(timezone.utc) + timedelta(days=1)
    eta_id = submit(client, "add", 1, 2, eta=at.isoformat())
    assert abs(manager.store.get(eta_id).eta - at.timestamp()) < 0.001
    unix_id = submit(client, "add", 1, 2, eta=at.timestamp())
    assert abs(manager.store.get(unix_id).eta - at.timestamp()) < 0.001

    first = submit(client, "add", 5, 5, unique=True)
    assert submit(client, "add", 5, 5, unique=True) == first  # the pending twin, not a new task
    assert manager.count("pending", name="add") == 4


# Issue 13 item 13: every number is range-checked before anything is stored. A century is
# the longest duration (longer ones overflow the timers and dates they feed: a countdown of
# 1e300 s used to store a task that made GET /tasks answer 500 for everyone).
CENTURY = 100 * 365 * 86_400
OUT_OF_RANGE = [
    ("countdown", -1, "greater than or equal to 0"),
    ("countdown", CENTURY + 1, "less than or equal to 3153600000"),
    ("countdown", 1e300, "less than or equal to"),
    ("countdown", True, "valid number"),
    ("countdown", "5", "valid number"),
    ("priority", 2**63, "less than or equal to 9223372036854775807"),
    ("priority", -(2**63) - 1, "greater than or equal to -9223372036854775808"),
    ("priority", False, "valid integer"),
    ("timeout", 0, "greater than 0"),
    ("timeout", CENTURY + 1, "less than or equal to"),
    ("retries", -1, "greater than or equal to 0"),
    ("retries", 101, "less than or equal to 100"),
    ("retries", 10**30, "less than or equal to 100"),
    ("retry_delay", -0.5, "greater than or equal to 0"),
    ("retry_delay", 1e308, "less than or equal to"),
    ("retry_backoff", 0.5, "greater than or equal to 1"),
    ("retry_backoff", 1e308, "less than or equal to 1000"),
    ("retry_max_delay", 1e308, "less than or equal to"),
    ("result_ttl", -1, "greater than or equal to 0"),
    ("result_ttl", 1e308, "less than or equal to"),
    ("failure_ttl", 0, "greater than 0"),
    ("failure_ttl", 1e308, "less than or equal to"),
    ("cache_ttl", 0, "greater than 0"),
    ("cache_ttl", 1e308, "less than or equal to"),
    ("eta", -1, "between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z"),
    ("eta", 253402300800, "between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z"),
    ("eta", "0001-01-01T00:00:00+01:00", "between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z"),
    ("eta", "9999-12-31T23:59:59-01:00", "between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z"),
    ("eta", "1700000000", "send Unix seconds as a JSON number"),
    ("eta", True, "eta must be"),
]


@pytest.mark.parametrize(("option", "value", "message"), OUT_OF_RANGE, ids=lambda v: repr(v)[:30])
def test_submit_numbers_out_of_range_are_422(client, manager, option, value, message):
    response = client.post("/tasks", json={"name": "add", "args": [1, 2], option: value})
    assert response.status_code == 422, response.text
    assert message in response.text, response.text
    assert manager.count() == 0


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("option", ["countdown", "timeout", "retry_delay", "result_ttl", "eta"])
def test_submit_refuses_json_nan_and_infinity(client, manager, option, token):
    body = '{"name": "add", "args": [1, 2], "%s": %s}' % (option, token)  # Python's json reads these
    response = client.post("/tasks", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert f"{token} is not JSON: numbers must be finite" in response.text
    assert manager.count() == 0


@pytest.mark.parametrize(("body", "message"), [
    ('{"name": NaN}', "NaN is not JSON"),  # FastAPI's own 422 repeated the NaN: a 500
    ('{"name": "add", "args": [1, 2], "priority": 1e400}', "the number 1e400 is too large for a float"),
    ('{"name": "add", "args": [1e400, 2]}', "too large for a float"),
    ('{"name": "add", "args": [%s, 2]}' % ("9" * 5000), "an integer of 5000 digits is more than this server reads"),
    ('{"name": "add", "args": [1, 2], "countdonw": -Infinity}', "-Infinity is not JSON"),
    (b'{"name": "\xef\xde\xab"}', "the body is not UTF-8 text: invalid continuation byte at byte 10"),
])
def test_bodies_with_numbers_json_cannot_carry_are_422(manager, body, message):
    client = TestClient(make_client(manager).app, raise_server_exceptions=False)
    response = client.post("/tasks", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"] == "json_invalid" and message in response.text
    assert manager.count() == 0


def test_submit_numbers_at_their_bounds_are_stored_and_shown(client, manager):
    now = time.time()
    ids = [submit(client, "add", 1, 2, countdown=CENTURY, priority=2**63 - 1, timeout=CENTURY, retries=100,
                  retry_delay=CENTURY, retry_backoff=1000, retry_max_delay=CENTURY, result_ttl=CENTURY,
                  failure_ttl=CENTURY),
           submit(client, "add", 1, 2, priority=-(2**63), eta=0, cache_ttl=CENTURY),
           submit(client, "add", 1, 2, eta="9999-12-31T23:59:59Z"),
           submit(client, "add", 1, 2, eta=3e10)]  # Unix seconds however large (not milliseconds)
    shown = [client.get(f"/tasks/{i}") for i in ids]
    assert [r.status_code for r in shown] == [200] * 4
    assert manager.store.get(ids[0]).eta >= now + CENTURY
    assert [r.json()["eta"][:19] for r in shown[1:]] == [
        "1970-01-01T00:00:00", "9999-12-31T23:59:59", "2920-08-30T05:20:00"]
    listed = client.get("/tasks")
    assert listed.status_code == 200 and len(listed.json()) == 4


def test_list_paging_numbers_are_range_checked(client):
    submit(client, "add", 1, 2)
    for params in ({"offset": 2**63}, {"offset": 9223372036854775808}, {"limit": 2**63}, {"offset": "1e3"}):
        response = client.get("/tasks", params=params)
        assert response.status_code == 422, (params, response.text)
    largest = client.get("/tasks", params={"offset": 2**63 - 1, "limit": 1000})
    assert largest.status_code == 200 and largest.json() == []


def test_submit_options_are_apply_async_options():
    """Every apply_async option is offered over HTTP, except retry_on (exception classes)."""
    assert set(castor.web.SUBMIT_OPTIONS) == set(CALL_OPTIONS) - {"retry_on"}


def test_submit_refusals(client, manager):
    unknown = client.post("/tasks", json={"name": "ad", "args": [1, 2]})
    assert unknown.status_code == 404
    assert "no task named 'ad'" in unknown.json()["detail"] and "Did you mean 'add'?" in unknown.json()["detail"]

    cases = [
        ({"name": "add", "args": [1]}, "bad arguments for add: missing a required argument: 'b'"),
        ({"name": "add", "args": [1, 2, 3]}, "bad arguments for add: too many positional arguments"),
        ({"name": "resize", "args": ["wide", 10]}, "width: Input should be a valid integer"),
        ({"name": "add", "args": [1, 2], "countdown": -1}, "Input should be greater than or equal to 0"),
        ({"name": "add", "args": [1, 2], "countdown": 5, "eta": 2e9}, "give eta or countdown, not both"),
        ({"name": "add", "args": [1, 2], "priority": 1.5}, "valid integer"),
        ({"name": "add", "args": [1, 2], "queue": " "}, "queue must be a non-empty string"),
        ({"name": "add", "args": [1, 2], "retries": -1}, "retries"),
        ({"name": "add", "args": [1, 2], "eta": "2030-01-01T00:00:00"}, "timezone"),
        ({"name": "add", "args": [1, 2], "countdonw": 5}, "Extra inputs are not permitted"),
        ({"args": [1, 2]}, "Field required"),
    ]
    for body, message in cases:
        response = client.post("/tasks", json=body)
        assert response.status_code == 422, (body, response.text)
        assert message in response.text, (body, response.text)

    submit(client, "add", 1, 2, task_id="mine")
    taken = client.post("/tasks", json={"name": "add", "args": [1, 2], "task_id": "mine"})
    assert taken.status_code == 409 and "mine" in taken.json()["detail"]
    assert manager.count() == 1  # nothing refused was enqueued


# -- get ------------------------------------------------------------------------------


def test_get_unknown_id_is_404(client):
    response = client.get("/tasks/no-such-id")
    assert response.status_code == 404
    assert response.json()["detail"] == "task no-such-id is not in the database (purged, or never enqueued)"


def test_get_a_failed_task_shows_its_error(client, manager):
    task_id = submit(client, "fail", "it broke")
    drain(manager)
    task = client.get(f"/tasks/{task_id}").json()
    assert task["status"] == "failed" and task["result"] is None
    assert task["error"]["type"] == "builtins.ValueError" and task["error"]["message"] == "it broke"
    assert task["error"]["args"] == ["it broke"]
    assert "Traceback (most recent call last)" in task["error"]["traceback"]
    listed = client.get("/tasks", params={"status": "failed"}).json()
    assert [(t["id"], t["error"]) for t in listed] == [(task_id, "builtins.ValueError: it broke")]


def test_results_json_cannot_carry_come_back_as_their_repr(client, manager, tmp_path):
    task_id = submit(client, "not_a_number")
    drain(manager)
    task = client.get(f"/tasks/{task_id}").json()  # NaN: not valid JSON, and not a crash
    assert task["status"] == "success" and task["result"] is None and task["result_repr"] == "nan"

    pickled = castor.Manager(str(tmp_path / "pickle.db"), serializer="pickle")
    try:
        @pickled.task(mode="thread", name="odd")
        def odd(kind):
            return {"set": {1, 2}, "tuple": (1, 2), "object": Opaque(), "dict": {"a": [1, None]}}[kind]

        pclient = make_client(pickled)
        ids = {kind: submit(pclient, "odd", kind) for kind in ("set", "tuple", "object", "dict")}
        drain(pickled)
        shown = {k: pclient.get(f"/tasks/{i}").json() for k, i in ids.items()}
    finally:
        pickled.close()
    assert {k: (t["result"], t["result_repr"]) for k, t in shown.items()} == {
        "set": (None, "{1, 2}"), "tuple": (None, "(1, 2)"), "object": (None, "<Opaque thing>"),
        "dict": ({"a": [1, None]}, None)}


def test_progress_shows_on_get(client, manager):
    @manager.task(mode="thread", name="halfway")
    def halfway():
        castor.progress(0.5, "half done")
        return "ok"

    task_id = submit(client, "halfway")
    drain(manager)
    task = client.get(f"/tasks/{task_id}").json()
    assert (task["progress"], task["progress_message"]) == (0.5, "half done")


# -- cancel ---------------------------------------------------------------------------


def test_cancel_pending_finished_and_unknown(client, manager):
    waiting = submit(client, "add", 1, 2, countdown=3600)
    response = client.delete(f"/tasks/{waiting}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and manager.get(waiting).status() == "cancelled"

    again = client.delete(f"/tasks/{waiting}")
    assert again.status_code == 409
    assert again.json()["detail"] == f"task {waiting} already finished (cancelled); nothing to cancel"

    done = submit(client, "add", 1, 2)
    drain(manager)
    refused = client.delete(f"/tasks/{done}")
    assert refused.status_code == 409 and "already finished (success)" in refused.json()["detail"]
    assert manager.get(done).join(timeout=1) == 3  # untouched

    assert client.delete("/tasks/no-such-id").status_code == 404


def test_cancel_a_running_task(client, manager):
    with BackgroundWorker(manager):
        task_id = submit(client, "patient")
        wait_until(lambda: client.get(f"/tasks/{task_id}").json()["status"] == "running", 10, "it runs")
        response = client.delete(f"/tasks/{task_id}")
        assert response.status_code == 202
        assert response.json()["status"] == "running" and response.json()["cancel_requested"] is True
        wait_until(lambda: client.get(f"/tasks/{task_id}").json()["status"] == "cancelled", 10, "it stops")


# -- list, types, health --------------------------------------------------------------


def test_list_filters_and_pages(client, manager):
    a = submit(client, "add", 1, 1)
    b = submit(client, "add", 2, 2, queue="later", countdown=3600)
    c = submit(client, "fail", "no")
    drain(manager)

    def ids(**params):
        response = client.get("/tasks", params=params)
        assert response.status_code == 200, response.text
        return [t["id"] for t in response.json()]

    assert ids() == [c, b, a]  # newest first
    assert ids(status="success") == [a] and ids(status="pending") == [b]
    assert ids(name="add") == [b, a] and ids(queue="later") == [b]
    assert ids(name="add", status="failed") == []
    assert ids(limit=1) == [c] and ids(limit=2, offset=1) == [b, a]
    row = client.get("/tasks", params={"queue": "later"}).json()[0]
    assert set(row) == {"id", "name", "queue", "status", "priority", "attempts", "lost", "enqueued_at", "eta",
                        "started_at", "finished_at", "progress", "error"}
    for params in ({"status": "done"}, {"limit": 0}, {"limit": 1001}, {"offset": -1}):
        assert client.get("/tasks", params=params).status_code == 422, params
    assert "'pending'" in client.get("/tasks", params={"status": "done"}).text


def test_task_types(client):
    response = client.get("/tasks/types")
    assert response.status_code == 200
    types = {t["name"]: t for t in response.json()}
    assert list(types) == ["add", "fail", "not_a_number", "patient", "resize", "tick"]
    assert types["add"] == {
        "name": "add", "mode": "thread", "daemon": False, "queue": "default", "priority": 0, "timeout": None,
        "retries": 0, "unique": False, "cache_ttl": None, "validate": False, "schedule": None,
        "doc": "Add two numbers."}
    resize = types["resize"]
    assert (resize["mode"], resize["daemon"], resize["queue"], resize["priority"], resize["validate"]) == (
        "process", True, "images", 3, True)
    assert types["tick"]["schedule"] == "every 60 s" and types["tick"]["retries"] == 2


def test_types_and_submit_import_the_managers_include_modules(db_path, tmp_path, monkeypatch):
    (tmp_path / "web_included_tasks.py").write_text(
        "from tests.integration.test_web import INCLUDED\n"
        "@INCLUDED[0].task(mode='thread', name='included')\n"
        "def included():\n    return 'in'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "web_included_tasks", raising=False)
    manager = castor.Manager(db_path, include=["web_included_tasks"])
    INCLUDED[:] = [manager]
    try:
        client = make_client(manager)
        assert [t["name"] for t in client.get("/tasks/types").json()] == ["included"]
        submit(client, "included")
    finally:
        manager.close()
        INCLUDED.clear()
        sys.modules.pop("web_included_tasks", None)


INCLUDED: list[castor.Manager] = []


def test_health(client, manager):
    submit(client, "add", 1, 2)
    submit(client, "add", 1, 2, queue="later")
    submit(client, "fail", "x")
    drain(manager, "thread")
    submit(client, "add", 3, 4)
    response = client.get("/tasks/health")
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok" and health["error"] is None and health["castords"] == 0
    assert health["counts"] == {"pending": 1, "running": 0, "success": 2, "failed": 1, "cancelled": 0,
                                 "waiting": 0}
    assert health["queue_depth"] == {"default": 1} and health["oldest_due_wait_s"] >= 0


def test_a_locked_database_is_503_with_retry_after(client, manager, monkeypatch):
    def locked(*args, **kwargs):
        raise castor.DatabaseLockedError("the database stayed locked for 30 s")

    for method in ("get", "counts_by_status", "list", "enqueue"):
        monkeypatch.setattr(manager.store, method, locked)
    for response in (client.get("/tasks/x"), client.get("/tasks"), client.get("/tasks/health"),
                     client.post("/tasks", json={"name": "add", "args": [1, 2]}), client.delete("/tasks/x")):
        assert response.status_code == 503, response.request.url
        assert response.headers["retry-after"] == "1"
        assert "locked for 30 s" in response.text
    assert client.get("/tasks/health").json()["status"] == "unavailable"


# -- the router's options ---------------------------------------------------------------


def test_prefix_tags_and_dependencies(manager):
    def token(x_token: str | None = Header(default=None)) -> None:
        if x_token != "s3cret":
            raise HTTPException(401, "a valid X-Token header is required")

    client = make_client(manager, prefix="/api/jobs", tags=["jobs"], dependencies=[Depends(token)])
    denied = client.post("/api/jobs", json={"name": "add", "args": [1, 2]})
    assert denied.status_code == 401 and manager.count() == 0
    assert client.get("/api/jobs/health").status_code == 401
    allowed = client.post("/api/jobs", json={"name": "add", "args": [1, 2]}, headers={"X-Token": "s3cret"})
    assert allowed.status_code == 202 and allowed.json()["url"].startswith("/api/jobs/")
    assert client.get("/tasks/health").status_code == 404  # nothing at the default prefix
    schema = client.app.openapi()
    assert set(schema["paths"]) == {"/api/jobs", "/api/jobs/types", "/api/jobs/health", "/api/jobs/{task_id}"}
    assert schema["paths"]["/api/jobs"]["post"]["tags"] == ["jobs"]

    root = make_client(manager, prefix="")
    task_id = submit(root, "add", 1, 2, prefix="/")
    assert root.get(f"/{task_id}").json()["id"] == task_id and root.get("/health").status_code == 200

    for bad in ("tasks", "/tasks/"):
        with pytest.raises(castor.ConfigurationError, match="prefix must start with '/'"):
            castor.web.router(manager, prefix=bad)


def test_an_eager_manager_has_run_the_task_by_the_time_post_answers(tmp_path):
    manager = castor.Manager(str(tmp_path / "eager.db"), eager=True)
    define_tasks(manager)
    try:
        client = make_client(manager)
        response = client.post("/tasks", json={"name": "add", "args": [20, 22]})
        assert response.status_code == 202 and response.json()["status"] == "success"
        assert client.get(response.json()["url"]).json()["result"] == 42
    finally:
        manager.close()


def test_without_fastapi_the_import_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "castor.web")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'castor\[web\]'"):
        importlib.import_module("castor.web")


# -- examples/fastapi_app -----------------------------------------------------------------


@pytest.fixture
def example(tmp_path, monkeypatch):
    """examples/fastapi_app on a fresh database, its app run by the test client
    (its lifespan closes the Manager, and the BeaverDB manager.db opened, at the end)."""
    monkeypatch.setenv("CASTOR_FASTAPI_DB", str(tmp_path / "fastapi_app.db"))
    names = ("examples.fastapi_app.main", "examples.fastapi_app.tasks")
    for name in names:
        sys.modules.pop(name, None)
    main = importlib.import_module("examples.fastapi_app.main")
    try:
        with TestClient(main.app) as client:
            yield main, client
    finally:
        for name in names:
            sys.modules.pop(name, None)


def test_example_seed_endpoints(example):
    main, client = example
    response = client.post("/calculate", json={"a": 10, "b": 20})
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    assert response.json()["status"] == "pending"
    assert client.get(f"/calculations/{task_id}").json() == {
        "task_id": task_id, "status": "pending", "result": None, "error": None}
    drain(main.manager, "process")
    assert client.get(f"/calculations/{task_id}").json() == {
        "task_id": task_id, "status": "success", "result": 30, "error": None}
    defaults = client.post("/calculate", json={}).json()["task_id"]
    drain(main.manager, "process")
    assert client.get(f"/calculations/{defaults}").json()["result"] == 350  # the seed's 100 + 250
    assert client.get("/calculations/no-such-id").status_code == 404
    assert client.post("/calculate", json={"a": "ten"}).status_code == 422


def test_example_wait_endpoint(example):
    main, client = example
    task_id = client.post("/calculate", json={"a": 1, "b": 2}).json()["task_id"]
    started = time.monotonic()
    still = client.get(f"/calculations/{task_id}/wait", params={"timeout": 0.2}).json()
    assert still["status"] == "pending" and time.monotonic() - started >= 0.2
    with BackgroundWorker(main.manager, mode="process"):
        done = client.get(f"/calculations/{task_id}/wait", params={"timeout": 20}).json()
    assert done == {"task_id": task_id, "status": "success", "result": 3, "error": None}
    assert client.get("/calculations/no-such-id/wait").status_code == 404


def test_example_task_router(example):
    main, client = example
    names = [t["name"] for t in client.get("/tasks/types").json()]
    assert names == [f"examples.fastapi_app.tasks.{n}" for n in
                     ("build_report", "complex_calculation", "process_payment")]
    payment = "examples.fastapi_app.tasks.process_payment"
    bad = client.post("/tasks", json={"name": payment, "args": ["order-1", "a lot"]})
    assert bad.status_code == 422 and "amount: Input should be a valid number" in bad.text
    paid = submit(client, payment, "order-1", 9.5)
    report = submit(client, "examples.fastapi_app.tasks.build_report", 4, priority=5)
    drain(main.manager, "thread")
    drain(main.manager, "process")
    assert client.get(f"/tasks/{paid}").json()["result"] == {"status": "ok", "processed_order": "order-1"}
    assert main.manager.db.dict("payments")["order-1"]["amount"] == 9.5
    shown = client.get(f"/tasks/{report}").json()
    assert shown["result"] == {"sections": 4} and shown["priority"] == 5
    assert (shown["progress"], shown["progress_message"]) == (1.0, "section 4 of 4")
    health = client.get("/tasks/health").json()
    assert health["status"] == "ok" and health["counts"]["success"] == 2


def test_example_numbers_are_range_checked(example):
    main, client = example
    task_id = client.post("/calculate", json={"a": 1, "b": 2}).json()["task_id"]
    for timeout in ("-1", "60.5", "nan", "inf", "1e308"):
        response = client.get(f"/calculations/{task_id}/wait", params={"timeout": timeout})
        assert response.status_code == 422, (timeout, response.text)
    assert client.get(f"/calculations/{task_id}/wait", params={"timeout": 0}).json()["status"] == "pending"
    for body in ({"a": False}, {"a": "5"}, {"a": 2**63}, {"b": -(2**63) - 1}, {"a": 1.5}):
        response = client.post("/calculate", json=body)
        assert response.status_code == 422, (body, response.text)
    for raw in ('{"a": NaN}', '{"a": 1e400}'):  # the app's own routes refuse what JSON cannot carry too
        response = client.post("/calculate", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid", raw
    assert client.post("/calculate", json={"a": 2**63 - 1, "b": -(2**63)}).status_code == 202
    assert main.manager.count() == 2


def test_example_opens_no_beaverdb_at_import(example):
    """A BeaverDB opened at import would be inherited by gunicorn --preload's workers, and hang
    there (tests/process/test_gunicorn.py runs that); the example opens it on first use."""
    main, _client = example
    tasks = sys.modules["examples.fastapi_app.tasks"]
    assert main.manager._db is None  # nothing opened it yet
    assert not [v for v in vars(tasks).values() if type(v).__name__ == "BeaverDB"]


def test_any_store_unavailable_is_503_with_retry_after_and_a_broken_store_without(client, manager, monkeypatch):
    """StoreUnavailable is the family a caller may wait out (any backend's, not only
    SQLite's lock); other store errors are 503 too, but no retry will fix them."""
    def busy(*args, **kwargs):
        raise castor.StoreUnavailable("the server is restarting")

    monkeypatch.setattr(manager.store, "get", busy)
    response = client.get("/tasks/x")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"

    def broken(*args, **kwargs):
        raise castor.StoreError("app.db is read-only")

    monkeypatch.setattr(manager.store, "get", broken)
    response = client.get("/tasks/x")
    assert response.status_code == 503 and "retry-after" not in response.headers
    assert "read-only" in response.text
    assert issubclass(castor.DatabaseLockedError, castor.StoreUnavailable)


def test_list_pages_by_key_with_the_next_after_header(client, manager):
    ids = [manager.registry["add"].apply_async((i, i), countdown=3600).id for i in range(5)]
    seen, params = [], {"limit": 2, "name": "add"}
    while True:
        response = client.get("/tasks", params=params)
        assert response.status_code == 200, response.text
        seen += [t["id"] for t in response.json()]
        key = response.headers.get("X-Castor-Next-After")
        if key is None:
            break
        params = {"limit": 2, "name": "add", "after": key}
    assert seen == list(reversed(ids))  # every task once, newest first, by key
    assert len(response.json()) == 1  # the short last page carries no next key


@pytest.mark.parametrize(("params", "message"), [
    ({"after": "12.5"}, "after must be a page key ENQUEUED_AT:ID"),
    ({"after": "nan:x"}, "after must be a page key ENQUEUED_AT:ID"),
    ({"after": "1.0:x", "offset": 1}, "after and offset do not combine"),
])
def test_a_bad_page_key_is_a_422(client, params, message):
    response = client.get("/tasks", params=params)
    assert response.status_code == 422 and message in response.text
