"""The dashboard's HTTP answers, in-process (Starlette's test client) on a real beaver-db
file: the screens, the checks every request passes (token, CSRF, read-only), every
error a user can meet, and mounting under a prefix. The browser tests (test_browser.py)
do the same things through chromium; these pin each answer down one by one."""

from __future__ import annotations

import html
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

import castor
from castor import Worker
from castor.clocks import boot_clock
from castor.periodic import Scheduler
from castor.store import Query
from castor.webui import dashboard, pages
from castor.webui.security import CSRF_COOKIE, SESSION_COOKIE

pytestmark = pytest.mark.timeout(60)

TOKEN = "a-token-long-enough-for-the-rule"


@pytest.fixture
def app_manager(manager: castor.Manager) -> castor.Manager:
    return define_tasks(manager)


def define_tasks(manager: castor.Manager) -> castor.Manager:
    @manager.task(mode="thread", name="add")
    def add(a, b):
        return a + b

    @manager.task(mode="thread", name="fail")
    def fail(kind):
        raise {"value": ValueError, "key": KeyError}[kind](f"bad {kind}")

    @manager.periodic(every=60, mode="thread", name="minutely")
    def minutely():
        return "tick"

    return manager


@pytest.fixture
def client(app_manager: castor.Manager) -> Iterator[Callable[..., TestClient]]:
    opened: list[TestClient] = []

    def make(**options: Any) -> TestClient:
        test_client = TestClient(dashboard(app_manager, **options), follow_redirects=False)
        opened.append(test_client)
        return test_client

    yield make
    for test_client in opened:
        test_client.close()


def run_all(manager: castor.Manager) -> None:
    Worker(manager, mode="thread").run(until_idle=True)


def set_cookie(client: TestClient, name: str, value: str) -> None:
    """Replace the cookie the dashboard set (for its test host) with `value`."""
    client.cookies.delete(name)
    client.cookies.set(name, value, domain="testserver.local")


def flat(response: Any) -> str:
    """A page's HTML with each run of whitespace as one space (templates wrap lines)."""
    return re.sub(r"\s+", " ", response.text)


def csrf_of(client: TestClient, path: str = "/tasks") -> str:
    """The CSRF field a page hands out (and the cookie it goes with, now in the client)."""
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get(path).text)
    assert match, "the page has no form"
    return match.group(1)


def test_every_screen_answers_with_the_security_headers(app_manager, client):
    task = app_manager.registry["add"].delay(1, 2)
    app_manager.registry["fail"].delay("value")
    run_all(app_manager)
    web = client()
    for path in ("/", "/queues", "/tasks", "/tasks?status=failed&name=fail", f"/tasks/{task.id}", "/failed",
                 "/periodic", "/login"):
        response = web.get(path, follow_redirects=True)
        assert response.status_code == 200, (path, response.text[:500])
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
    assert web.get("/static/dashboard.css").status_code == 200


def test_an_empty_store_shows_every_screen(client):
    web = client()
    overview = web.get("/")
    assert "No castord has a heartbeat row" in overview.text
    assert web.get("/tasks").status_code == 200 and "No task matches." in web.get("/tasks").text
    assert "No failed task." in web.get("/failed").text


def test_a_post_without_the_csrf_pair_is_refused(app_manager, client):
    task = app_manager.registry["add"].apply_async((1, 2), countdown=3600)
    web = client()
    assert web.post(f"/tasks/{task.id}/cancel", data={"x": "1"}).status_code == 403  # no cookie yet, no field
    field = csrf_of(web)
    assert web.post(f"/tasks/{task.id}/cancel", data={"csrf": "0" * 64}).status_code == 403
    set_cookie(web, CSRF_COOKIE, "another-browser")
    assert web.post(f"/tasks/{task.id}/cancel", data={"csrf": field}).status_code == 403  # field of another cookie
    assert task.status() == "pending"
    fresh = client()
    field = csrf_of(fresh)
    answer = fresh.post(f"/tasks/{task.id}/cancel", data={"csrf": field})
    assert answer.status_code == 303 and answer.headers["location"] == f"/tasks/{task.id}"
    assert task.status() == "cancelled"


def test_read_only_hides_the_forms_and_refuses_every_action(app_manager, client):
    failed = app_manager.registry["fail"].delay("value")
    run_all(app_manager)
    writable = client()
    field = csrf_of(writable)  # a valid pair, from a dashboard that allows actions
    web = client(read_only=True)
    set_cookie(web, CSRF_COOKIE, writable.cookies[CSRF_COOKIE])
    for path in ("/", "/tasks", f"/tasks/{failed.id}", "/failed", "/queues"):
        assert 'method="post"' not in web.get(path).text
    for path, data in ((f"/tasks/{failed.id}/retry", {}), ("/tasks/bulk", {"action": "retry", "scope": "all",
                                                                            "status": "failed", "confirm": "yes"}),
                       ("/queues/pause", {"queue": "default"})):
        answer = web.post(path, data={"csrf": field, **data})
        assert answer.status_code == 403 and "read-only" in answer.text
    assert failed.status() == "failed"
    assert app_manager.paused_queues() == set()


def test_a_token_is_asked_for_and_given_by_header_or_login(client):
    web = client(token=TOKEN)
    first = web.get("/tasks?status=failed")
    assert first.status_code == 303 and first.headers["location"] == "/login?next=%2Ftasks%3Fstatus%3Dfailed"
    assert web.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert web.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 303
    assert web.get("/", headers={"Authorization": TOKEN}).status_code == 303  # no scheme
    assert web.get("/", headers={"HX-Request": "true"}).status_code == 401  # htmx polling: no redirect to follow
    post = web.post("/tasks/bulk", data={})
    assert post.status_code == 401 and post.headers["www-authenticate"].startswith("Bearer")
    assert web.get("/static/dashboard.css").status_code == 200  # the login page needs it

    field = csrf_of(web, "/login")
    wrong = web.post("/login", data={"csrf": field, "token": "not-it", "next": "/failed"})
    assert wrong.status_code == 401 and "not the right one" in wrong.text
    assert SESSION_COOKIE not in web.cookies
    right = web.post("/login", data={"csrf": field, "token": TOKEN, "next": "/failed"})
    assert right.status_code == 303 and right.headers["location"] == "/failed"
    assert web.get("/failed").status_code == 200
    cookie = web.cookies[SESSION_COOKIE]
    set_cookie(web, SESSION_COOKIE, cookie[:-1] + ("0" if cookie[-1] != "0" else "1"))
    assert web.get("/failed").status_code == 303  # a tampered session
    other = client(token=TOKEN + "-changed")
    set_cookie(other, SESSION_COOKIE, cookie)
    assert other.get("/").status_code == 303  # a session of another token

    set_cookie(web, SESSION_COOKIE, cookie)
    out = web.post("/logout", data={"csrf": field})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert web.get("/").status_code == 303


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "tasks"])
def test_login_goes_back_only_to_a_page_of_the_dashboard(client, target):
    web = client(token=TOKEN)
    field = csrf_of(web, "/login")
    answer = web.post("/login", data={"csrf": field, "token": TOKEN, "next": target})
    assert answer.status_code == 303 and answer.headers["location"] == "/"


@pytest.mark.parametrize(("query", "message"), [
    ("status=bogus", "status 'bogus' is not one of pending, running, success, failed, cancelled"),
    ("limit=0", "limit must be between 1 and 1,000, not 0"),
    ("limit=abc", "limit must be a whole number, not 'abc'"),
    ("after=12.5", "after must be a page key ENQUEUED_AT:ID"),
    ("after=soon:abc", "after must be a page key ENQUEUED_AT:ID"),
    ("after=nan:abc", "after must be a page key ENQUEUED_AT:ID"),
    ("after=12.5:", "after must be a page key ENQUEUED_AT:ID"),
    ("before=x", "before must be a page key ENQUEUED_AT:ID"),
    ("after=1.0:a&before=2.0:b", "a page goes from one key: after= (older) or before= (newer), not both"),
    ("enqueued_from=yesterday", "enqueued_from must be a UTC date and time like 2026-12-01T10:30, not 'yesterday'"),
    ("finished_to=2026-13-01T00:00", "finished_to must be a UTC date and time"),
    ("enqueued_from=2026-12-01T10:00&enqueued_to=2026-12-01T09:00", "enqueued to must be later than enqueued from"),
    ("finished_from=2026-12-01T10:00&finished_to=2026-12-01T10:00", "finished to must be later than finished from"),
    ("args=" + "x" * 201, "args is at most 200 characters, not 201"),
])
def test_a_bad_filter_is_a_400_that_says_why(client, query, message):
    answer = client().get(f"/tasks?{query}")
    assert answer.status_code == 400
    assert message in answer.text.replace("&#39;", "'")


def test_errors_a_user_can_meet(app_manager, client):
    web = client()
    field = csrf_of(web)
    assert web.get("/tasks/no-such-task").status_code == 404
    assert "not in the database" in web.get("/tasks/no-such-task").text
    task = app_manager.registry["add"].apply_async((1, 2), countdown=3600)
    assert web.post(f"/tasks/{task.id}/explode", data={"csrf": field}).status_code == 404
    assert web.post("/tasks/bulk", data={"csrf": field, "action": "explode"}).status_code == 400
    no_ids = web.post("/tasks/bulk", data={"csrf": field, "action": "cancel", "scope": "selected"})
    assert no_ids.status_code == 400 and "no task selected" in no_ids.text
    every_retry = web.post("/tasks/bulk", data={"csrf": field, "action": "retry", "scope": "all"})
    assert every_retry.status_code == 400 and "needs the status filter failed or cancelled" in every_retry.text
    wrong_status = web.post("/tasks/bulk", data={"csrf": field, "action": "cancel", "scope": "all",
                                                 "status": "success"})
    assert wrong_status.status_code == 400 and "cancel applies to pending, waiting or running tasks" in wrong_status.text
    as_json = web.post(f"/tasks/{task.id}/cancel", json={"csrf": field})
    assert as_json.status_code == 415
    huge = web.post(f"/tasks/{task.id}/cancel", content=b"csrf=" + b"a" * 1_100_000,
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert huge.status_code == 413
    garbled = web.post(f"/tasks/{task.id}/cancel", content=b"csrf=\xff\xfe",
                       headers={"content-type": "application/x-www-form-urlencoded"})
    assert garbled.status_code == 400 and "the form cannot be read" in garbled.text
    assert task.status() == "pending"


def test_actions_refused_by_a_tasks_state_are_said_not_failed(app_manager, client):
    web = client()
    field = csrf_of(web)
    done = app_manager.registry["add"].delay(1, 2)
    run_all(app_manager)
    waiting = app_manager.registry["add"].apply_async((3, 4), countdown=3600)
    cancel_done = web.post(f"/tasks/{done.id}/cancel", data={"csrf": field})
    assert cancel_done.status_code == 200 and "already finished (success); nothing to cancel" in cancel_done.text
    delete_waiting = web.post(f"/tasks/{waiting.id}/delete", data={"csrf": field})
    assert "it is pending: cancel it first" in delete_waiting.text
    retry_done = web.post(f"/tasks/{done.id}/retry", data={"csrf": field})
    assert "only failed or cancelled tasks can be retried" in retry_done.text
    mixed = web.post("/tasks/bulk", data={"csrf": field, "action": "delete", "scope": "selected",
                                          "id": [done.id, waiting.id, "no-such-task"]})
    assert "Deleted 1 task; 2 refused." in mixed.text
    assert app_manager.store.get(done.id) is None and waiting.status() == "pending"


def test_all_matching_asks_with_a_count_then_acts(app_manager, client):
    web = client()
    field = csrf_of(web)
    for kind in ("value", "value", "key"):
        app_manager.registry["fail"].delay(kind)
    app_manager.registry["add"].delay(1, 1)
    run_all(app_manager)
    form = {"csrf": field, "action": "retry", "scope": "all", "status": "failed", "name": "fail"}
    ask = web.post("/tasks/bulk", data=form)
    assert re.search(r'id="confirm-count">3<', ask.text)
    assert app_manager.count("failed") == 3  # asking changes nothing
    done = web.post("/tasks/bulk", data={**form, "confirm": "yes"})
    assert "Retried 3 tasks." in done.text and app_manager.count("pending") == 3
    run_all(app_manager)
    delete = {"csrf": field, "action": "delete", "scope": "all", "name": "fail", "confirm": "yes"}
    assert "Deleted 3 tasks." in web.post("/tasks/bulk", data=delete).text
    assert app_manager.counts() == {"pending": 0, "running": 0, "success": 1, "failed": 0, "cancelled": 0, "waiting": 0}
    nothing = web.post("/tasks/bulk", data={**form})
    assert "No task matching status failed, name fail can be retried now." in flat(nothing)


def test_tasks_pages_go_by_limit_and_the_last_rows_key(app_manager, client):
    ids = [app_manager.registry["add"].apply_async((i, i), countdown=3600).id for i in range(5)]
    web = client()
    first = web.get("/tasks?limit=2")
    assert "5 tasks match; showing 2." in flat(first)
    assert [i for i in reversed(ids) if i in first.text] == list(reversed(ids))[:2]  # newest first
    second_row = app_manager.store.get(ids[3])
    key = quote(f"{second_row.enqueued_at!r}:{second_row.id}")
    assert f'href="/tasks?limit=2&amp;after={key}" id="next"' in first.text and 'id="prev"' not in first.text
    fourth = app_manager.store.get(ids[1])
    last = web.get(f"/tasks?limit=2&after={quote(f'{fourth.enqueued_at!r}:{fourth.id}')}")
    assert "showing 1 older than the page before" in flat(last) and 'id="next"' not in last.text
    newest_here = app_manager.store.get(ids[0])
    back = quote(f"{newest_here.enqueued_at!r}:{newest_here.id}")
    assert ids[0] in last.text and 'href="/tasks?limit=2" id="first"' in last.text
    assert f'href="/tasks?limit=2&amp;before={back}" id="prev"' in last.text
    one = web.get(f"/tasks?id={ids[0]}")
    assert f"1 task match: id {ids[0]};" in flat(one)


def test_the_failed_screen_groups_by_task_and_exception(app_manager, client, monkeypatch):
    for kind in ("value", "value", "key"):
        app_manager.registry["fail"].delay(kind)
    run_all(app_manager)
    data = pages.failed(app_manager)
    assert [(g["name"], g["type"], g["count"]) for g in data["groups"]] == [
        ("fail", "builtins.ValueError", 2), ("fail", "builtins.KeyError", 1)]
    assert data["total"] == data["scanned"] == 3
    monkeypatch.setattr(pages, "FAILED_SCAN", 2)
    assert "the groups below are of the newest 2." in flat(client().get("/failed"))


def test_queues_show_due_and_scheduled_per_queue(app_manager, client, monkeypatch):
    add = app_manager.registry["add"]
    add.apply_async((1, 1), queue="mail")
    add.apply_async((1, 1), queue="mail")
    add.apply_async((1, 1), queue="mail", countdown=3600)
    data = pages.queues(app_manager)
    mail = next(q for q in data["queues"] if q.name == "mail")
    assert (mail.pending, mail.due, mail.scheduled, mail.running) == (3, 2, 1, 0)
    assert mail.oldest_due_wait_s is not None and mail.oldest_due_wait_s >= 0
    assert [q.name for q in data["queues"]] == ["default", "mail"]  # default: the registered tasks' queue
    assert (data["pending"], data["scheduled"]) == (3, 1)
    monkeypatch.setattr(pages, "QUEUE_SCAN", 2)
    mail = next(q for q in pages.queues(app_manager)["queues"] if q.name == "mail")
    assert (mail.pending, mail.due, mail.scheduled) == (3, None, None)
    assert '<td class="num">—</td>' in client().get("/queues").text


def test_queues_show_what_ended_in_the_last_minute_per_second(app_manager, client, monkeypatch):
    add, fail = app_manager.registry["add"], app_manager.registry["fail"]

    @app_manager.task(mode="thread", name="send", queue="mail")  # the screen lists the tasks' queues
    def send(to):
        return to

    for i in range(3):
        send.delay(f"user{i}")
    fail.apply_async(("value",), queue="mail")
    add.delay(1, 2)  # default
    run_all(app_manager)
    rows = {q.name: q for q in pages.queues(app_manager)["queues"]}
    assert (rows["mail"].succeeded_per_s, rows["mail"].failed_per_s) == (3 / 60, 1 / 60)
    assert (rows["default"].succeeded_per_s, rows["default"].failed_per_s) == (1 / 60, 0)
    # A minute on, they ended before the window.
    later = {q.name: q for q in pages.queues(app_manager, now=time.time() + 61)["queues"]}
    assert (later["mail"].succeeded_per_s, later["mail"].failed_per_s) == (0, 0)
    page = client().get("/queues").text
    mail_row = page[page.index('data-queue="mail"'):].split("</tr>")[0]
    assert '<td class="num queue-succeeded">0.05</td>' in mail_row
    assert '<td class="num queue-failed">0.02</td>' in mail_row
    # Past the cap the count stops: the page says "more than", never a wrong rate.
    monkeypatch.setattr(pages, "THROUGHPUT_CAP", 2)
    assert pages.queues(app_manager)["queues"][1].succeeded_per_s is None
    mail_row = client().get("/queues").text.split('data-queue="mail"')[1].split("</tr>")[0]
    assert '<td class="num queue-succeeded">&gt; 2/min</td>' in mail_row


def test_a_castord_that_stopped_beating_is_flagged_stale(app_manager, client):
    store = app_manager.store
    # The store measures heartbeats on its own clock (a documented seam): a beat a minute ago.
    store.clock = lambda: boot_clock() - 60
    try:
        store.record_daemon("gone", host="old-host", pid=4242, app="main:manager", started_at=time.time() - 3600,
                            info={"state": "running", "workers": 2, "threads": 4, "children": []}, now=time.time())
    finally:
        del store.clock
    store.record_daemon("alive", host="this-host", pid=4343, app="main:manager", started_at=time.time() - 5,
                        info={"state": "running", "workers": 2, "threads": 4, "children": [
                            {"role": "process-worker", "running": ["t1"]}, {"role": "process-worker", "running": []},
                            {"role": "thread-host", "running": ["t2", "t3"]}]}, now=time.time())
    text = client().get("/").text
    assert "castord old-host pid 4242 has not beaten for 1 min" in re.sub(r"\s+", " ", text)
    row = re.search(r"<tr>\s*<td>this-host</td>.*?</tr>", text, re.S)
    assert row and "1 / 2" in row.group(0) and "2 / 4" in row.group(0) and "stale" not in row.group(0)


def test_periodic_shows_the_last_and_next_tick(app_manager, client):
    web = client()
    assert "every 60 s" in web.get("/periodic").text
    now = time.time()
    scheduler = Scheduler(app_manager, now=now)
    [fired] = scheduler.fire_due(now + 61)  # a real tick, stepped instead of waited for
    row = pages.periodic(app_manager)["schedules"][0]
    assert row["name"] == "minutely" and row["task_id"] == fired
    assert row["last_tick"] is not None and row["next_tick"] > row["last_tick"]
    assert f'href="/tasks/{fired}"' in web.get("/periodic").text


def test_the_chart_counts_what_finished_in_each_five_minutes(app_manager):
    from castor.webui.charts import BUCKETS, last_hour

    app_manager.registry["add"].delay(1, 1)
    app_manager.registry["add"].delay(2, 2)
    app_manager.registry["fail"].delay("value")
    run_all(app_manager)
    now = time.time()
    chart = last_hour(app_manager.store, now=now)
    assert (chart.succeeded[-1], chart.failed[-1], sum(chart.succeeded), sum(chart.failed)) == (2, 1, 2, 1)
    assert chart.per_second == pytest.approx(3 / 60)
    later = last_hour(app_manager.store, now=now + 400)  # seen from 400 s on: one bucket back
    assert len(later.succeeded) == BUCKETS and later.succeeded[-2] == 2 and later.succeeded[-1] == 0
    assert later.per_second == 0
    assert sum(last_hour(app_manager.store, now=now + 4000).succeeded) == 0  # more than an hour ago


def test_mounted_under_a_prefix_every_link_and_cookie_keeps_it(app_manager):
    task = app_manager.registry["add"].apply_async((1, 2), countdown=3600)
    app = Starlette(routes=[Mount("/ops/castor", app=dashboard(app_manager))])
    with TestClient(app, follow_redirects=False) as web:
        page = web.get("/ops/castor/tasks")
        assert page.status_code == 200
        assert 'href="/ops/castor/static/dashboard.css"' in page.text
        assert f'href="/ops/castor/tasks/{task.id}"' in page.text
        assert 'action="/ops/castor/tasks/bulk"' in page.text
        assert "Path=/ops/castor" in page.headers["set-cookie"]
        assert web.get("/ops/castor/static/dashboard.css").status_code == 200
        field = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
        answer = web.post(f"/ops/castor/tasks/{task.id}/cancel", data={"csrf": field})
        assert answer.status_code == 303 and answer.headers["location"] == f"/ops/castor/tasks/{task.id}"
    assert task.status() == "cancelled"


def test_pickled_values_are_shown_by_type_and_size_without_running_them(db_path, tmp_path):
    manager = castor.Manager(db_path, serializer="pickle")
    try:
        @manager.task(mode="thread", name="keep")
        def keep(*values, extra=None):
            return {1, 2}

        proof = tmp_path / "ran"
        task = keep.delay(Point(1, 2), Trap(str(proof)), extra=(1, "a"))
        assert not proof.exists()
        with TestClient(dashboard(manager)) as web:
            text = web.get(f"/tasks/{task.id}").text
        # A Trap pickles as a call of open(): shown as what it would call, not called.
        assert "list of 2: tests.web.test_http.Point, _io.open" in text
        assert "[&lt;tests.web.test_http.Point&gt;, &lt;_io.open&gt;]" in text
        assert "dict of 1: extra: tuple" in text
        assert re.search(r"pickle, \d+ bytes", text)
        assert not proof.exists()  # the page read the pickle without running its code
    finally:
        manager.close()


@dataclass
class Point:
    x: int
    y: int


class Trap:
    """Unpickling this runs code (it creates a file): what a dashboard must never do."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_every_screen_and_action_on_postgresql(postgres_db_url):
    manager = define_tasks(castor.Manager(postgres_db_url))
    try:
        manager.registry["add"].delay(1, 2)
        failed = manager.registry["fail"].delay("value")
        waiting = [manager.registry["add"].apply_async((i, i), countdown=3600, queue="later") for i in range(3)]
        run_all(manager)
        with TestClient(dashboard(manager), follow_redirects=False) as web:
            for path in ("/", "/queues", "/tasks", f"/tasks/{failed.id}", "/failed", "/periodic"):
                assert web.get(path).status_code == 200, path
            overview = flat(web.get("/"))
            for status, n in manager.counts().items():
                assert re.search(rf'data-status="{status}"> <div class="label">{status}</div><div class="n">{n}<',
                                 overview), status
            assert "builtins.ValueError" in web.get("/failed").text
            field = csrf_of(web)
            assert web.post(f"/tasks/{failed.id}/retry", data={"csrf": field}).status_code == 303
            assert failed.status() == "pending"
            form = {"csrf": field, "action": "cancel", "scope": "all", "queue": "later"}
            assert re.search(r'id="confirm-count">3<', web.post("/tasks/bulk", data=form).text)
            assert "Cancelled 3 tasks." in web.post("/tasks/bulk", data={**form, "confirm": "yes"}).text
            assert [t.status() for t in waiting] == ["cancelled"] * 3
    finally:
        manager.close()


def test_the_overview_shows_a_big_finished_count_as_an_estimate_on_postgresql(postgres_db_url, monkeypatch):
    import psycopg

    manager = define_tasks(castor.Manager(postgres_db_url))
    try:
        manager.registry["add"].map([(i, i) for i in range(30)])
        manager.registry["fail"].delay("value")
        run_all(manager)
        with psycopg.connect(postgres_db_url, autocommit=True) as conn:
            conn.execute("ANALYZE castor_tasks")
        monkeypatch.setattr(pages, "COUNT_CAP", 10)
        with TestClient(dashboard(manager), follow_redirects=False) as web:
            overview = flat(web.get("/"))
        assert re.search(r'data-status="success"> <div class="label">success</div><div class="n" '
                         r'title="the store.s estimate: more than 10, not counted row by row">≈ 30<', overview)
        assert re.search(r'data-status="failed"> <div class="label">failed</div><div class="n">1<', overview)
    finally:
        manager.close()


def test_a_damaged_database_is_a_503_that_says_so(db_path):
    from tests.process.test_bad_input import corrupt_middle

    corrupt_middle(db_path)
    manager = castor.Manager(db_path)
    try:
        with TestClient(dashboard(manager)) as web:
            # A search reads every row of a small file (a plain first page reads only its 51, by the listing index).
            answer = web.get("/tasks?args=never-stored")
        assert answer.status_code == 503
        assert "the database cannot be read:" in answer.text and "malformed" in answer.text
    finally:
        manager.close()


def test_a_queue_is_paused_and_resumed_from_the_queues_screen(app_manager, client):
    web = client()
    page = web.get("/queues").text
    assert 'action="/queues/pause"' in page and 'name="queue" value="default"' in page
    field = csrf_of(web, "/queues")
    assert web.post("/queues/pause", data={"queue": "default"}).status_code == 403  # no CSRF field
    assert app_manager.paused_queues() == set()
    answer = web.post("/queues/pause", data={"csrf": field, "queue": "default"})
    assert answer.status_code == 303 and answer.headers["location"] == "/queues"
    assert app_manager.paused_queues() == {"default"}
    row = re.search(r'<tr data-queue="default" class="paused">.*?</tr>', web.get("/queues").text, re.S)
    assert row and ">paused<" in row.group(0) and 'action="/queues/resume"' in row.group(0)
    # Any name may be paused (a queue exists when tasks name it); it is listed from then on.
    assert web.post("/queues/pause", data={"csrf": field, "queue": "later"}).status_code == 303
    assert 'data-queue="later" class="paused"' in web.get("/queues").text
    assert web.post("/queues/resume", data={"csrf": field, "queue": "default"}).status_code == 303
    assert app_manager.paused_queues() == {"later"}


def test_a_queue_action_needs_a_known_action_and_a_queue(app_manager, client):
    web = client()
    field = csrf_of(web, "/queues")
    unknown = web.post("/queues/drop", data={"csrf": field, "queue": "default"})
    assert unknown.status_code == 404 and "no queue action" in unknown.text
    nameless = web.post("/queues/pause", data={"csrf": field})
    assert nameless.status_code == 400 and "no queue named" in nameless.text
    assert app_manager.paused_queues() == set()


def test_the_tasks_screen_pages_by_key_through_every_task_once(app_manager, client):
    add = app_manager.registry["add"]
    ids = [add.apply_async((i, i), countdown=3600).id for i in range(7)]
    web = client()
    seen, path, pages_read = [], "/tasks?limit=3", 0
    while path:
        page = web.get(path)
        assert page.status_code == 200
        seen += re.findall(r'<tr data-id="([^"]+)"', page.text)
        pages_read += 1
        older = re.search(r'href="([^"]+)" id="next"', page.text)
        path = older.group(1).replace("&amp;", "&") if older else None
        if path:
            assert "after=" in path and "offset" not in path
    assert pages_read == 3 and seen == [r.id for r in app_manager.store.list(Query())] and sorted(seen) == sorted(ids)
    beyond = web.get("/tasks?limit=3&after=" + quote(f"{1e12!r}:zzz")).text  # a key newer than every task
    assert 'id="first"' in beyond and 'id="prev"' not in beyond  # nothing is newer than its first row


def test_the_newer_link_walks_back_through_the_same_pages(app_manager, client):
    add = app_manager.registry["add"]
    for i in range(7):
        add.apply_async((i, i), countdown=3600)
    web = client()

    def rows(page: Any) -> list[str]:
        return re.findall(r'<tr data-id="([^"]+)"', page.text)

    def link(page: Any, name: str) -> str | None:
        found = re.search(rf'href="([^"]+)" id="{name}"', page.text)
        return found.group(1).replace("&amp;", "&") if found else None

    forward, path = [], "/tasks?limit=3"
    while path:
        page = web.get(path)
        forward.append(rows(page))
        path = link(page, "next")
    assert [len(p) for p in forward] == [3, 3, 1]
    backward, path = [], link(page, "prev")
    while path:
        assert "before=" in path
        page = web.get(path)
        assert "showing 3 newer than the page after" in flat(page)
        backward.append(rows(page))
        path = link(page, "prev")
    assert backward == forward[-2::-1]  # the same pages, newest last; none newer than the first
    assert link(page, "next") is not None and link(page, "first") is not None


def test_an_argument_search_reads_a_window_per_page_and_pages_on_past_it(app_manager, client, monkeypatch):
    add = app_manager.registry["add"]
    # Oldest first: hit0, 4 misses, hit1, 4 misses, hit2 (newest).
    ids = {}
    for i in range(11):
        label = f"hit{i // 5}" if i % 5 == 0 else f"miss{i}"
        ids[label] = add.apply_async((f"{label}@example.com", i), countdown=3600).id
    monkeypatch.setattr(pages, "SEARCH_SCAN", 4)
    web = client()
    seen, path, pages_read = [], "/tasks?args=hit", 0
    while path and pages_read < 10:
        page = web.get(path)
        assert page.status_code == 200
        text = flat(page)
        assert "in the next 4 tasks searched" in text and "searches at most 4 tasks" in text
        seen += [label for label, task_id in ids.items() if task_id in page.text and label.startswith("hit")]
        found = re.search(r'href="(/tasks\?[^"]*)" id="next"', page.text)
        path = html.unescape(found.group(1)) if found else None
        pages_read += 1
    # Every match found once, newest first, in windows of 4: [hit2 m9 m8 m7] [m6 hit1 m4 m3] [m2 m1 hit0].
    assert seen == ["hit2", "hit1", "hit0"] and pages_read == 3
    # A window that finds more than a page's rows links on from the last one shown.
    monkeypatch.setattr(pages, "SEARCH_SCAN", 100)
    first = web.get("/tasks?args=hit&limit=2")
    assert ids["hit2"] in first.text and ids["hit1"] in first.text and ids["hit0"] not in first.text
    older = html.unescape(re.search(r'href="(/tasks\?[^"]*)" id="next"', first.text).group(1))
    assert ids["hit0"] in web.get(older).text


def test_a_count_past_the_cap_says_so(app_manager, client, monkeypatch):
    for i in range(5):
        app_manager.registry["add"].apply_async((i, i), countdown=3600)
    monkeypatch.setattr(pages, "COUNT_CAP", 3)
    page = flat(client().get("/tasks?limit=2"))
    assert "3+ tasks match; showing 2." in page and "All 3+ matching:" in page
    monkeypatch.setattr(pages, "COUNT_CAP", 5)
    assert "5 tasks match; showing 2." in flat(client().get("/tasks?limit=2"))  # exactly the cap: no +


def test_the_tasks_screen_searches_arguments_and_filters_by_time(app_manager, client):
    add = app_manager.registry["add"]
    alice = add.apply_async(("alice@example.com", 1), countdown=3600)
    bob = add.apply_async(("bob@example.com", 2), countdown=3600)
    web = client()
    found = web.get("/tasks?args=" + quote("alice@"))
    assert alice.id in found.text and bob.id not in found.text
    assert "1 match in the next 50,000 tasks searched: arguments containing 'alice@'." in flat(found).replace(
        "&#39;", "'")
    assert "pickled arguments are never searched" in found.text
    assert 'name="args" value="alice@"' in found.text  # the form shows what it searched for
    record = app_manager.store.get(bob.id)
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.enqueued_at - 1))
    end = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.enqueued_at + 2))
    window = web.get(f"/tasks?enqueued_from={start}&enqueued_to={end}")
    assert alice.id in window.text and bob.id in window.text  # both came in within those seconds
    assert f'name="enqueued_from" aria-label="enqueued from" value="{start}"' in window.text
    assert f"enqueued from {start.replace('T', ' ')} UTC before {end.replace('T', ' ')} UTC" in flat(window)
    before = web.get(f"/tasks?enqueued_to={start}")
    assert "No task matches." in before.text
    nothing_finished = web.get(f"/tasks?finished_from={start}")
    assert "No task matches." in nothing_finished.text  # pending: not finished at all
    run_all(app_manager)  # countdown: nothing runs yet
    alice.cancel()
    ended = web.get(f"/tasks?finished_from={start}")
    assert alice.id in ended.text and bob.id not in ended.text


# -- run now and run again, on a task's page ------------------------------------------

def buttons(web, task_id: str) -> list[str]:
    page = web.get(f"/tasks/{task_id}").text
    return [name for name in ("retry", "cancel", "delete", "run-now", "run-again")
            if f'id="action-{name}"' in page]


def web_actions(caplog) -> list[dict]:
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "web.action"]


def test_each_state_offers_the_actions_that_fit_it(app_manager, client):
    add, fail = app_manager.registry["add"], app_manager.registry["fail"]
    done, failed = add.delay(1, 2), fail.delay("value")
    run_all(app_manager)
    later, due = add.apply_async((3, 4), countdown=3600), add.delay(5, 6)
    web = client()
    assert buttons(web, later.id) == ["cancel", "run-now"]
    assert buttons(web, due.id) == ["cancel"]
    assert buttons(web, done.id) == ["delete", "run-again"]
    assert buttons(web, failed.id) == ["retry", "delete", "run-again"]
    assert "Retry sends this same task back to the queue (same id" in flat(web.get(f"/tasks/{failed.id}"))
    assert "Run now makes this task due at once" in flat(web.get(f"/tasks/{later.id}"))


def test_run_now_makes_a_scheduled_task_due_and_logs_it(app_manager, client, caplog):
    caplog.set_level(logging.INFO, logger="castor.webui")
    later = app_manager.registry["add"].apply_async((3, 4), countdown=3600)
    web = client()
    answer = web.post(f"/tasks/{later.id}/run-now", data={"csrf": csrf_of(web)})
    assert answer.status_code == 303 and answer.headers["location"] == f"/tasks/{later.id}"
    assert app_manager.store.get(later.id).eta <= time.time()
    assert buttons(web, later.id) == ["cancel"]
    run_all(app_manager)
    assert later.join(timeout=5) == 7
    (logged,) = web_actions(caplog)
    assert (logged["action"], logged["scope"], logged["count"], logged["task_ids"]) == \
           ("run-now", "task", 1, [later.id])


def test_run_again_opens_the_copy_and_links_both_pages(app_manager, client, caplog):
    caplog.set_level(logging.INFO, logger="castor.webui")
    done = app_manager.registry["add"].delay(1, 2)
    run_all(app_manager)
    web = client()
    answer = web.post(f"/tasks/{done.id}/run-again", data={"csrf": csrf_of(web)})
    assert answer.status_code == 303
    copy_id = answer.headers["location"].removeprefix("/tasks/")
    assert copy_id != done.id and app_manager.store.get(copy_id).status == "pending"
    assert f'id="rerun-of"><a href="/tasks/{done.id}">{done.id}</a>' in web.get(f"/tasks/{copy_id}").text
    assert f'id="rerun-as"><a href="/tasks/{copy_id}">{copy_id}</a>' in web.get(f"/tasks/{done.id}").text
    (logged,) = web_actions(caplog)
    assert (logged["action"], logged["task_ids"], logged["created"]) == ("run-again", [done.id], [copy_id])


def test_states_that_refuse_them_are_said(app_manager, client):
    web = client()
    field = csrf_of(web)
    due = app_manager.registry["add"].delay(1, 2)
    refused = web.post(f"/tasks/{due.id}/run-now", data={"csrf": field})
    assert refused.status_code == 200 and "is due already" in refused.text
    pending_again = web.post(f"/tasks/{due.id}/run-again", data={"csrf": field})
    assert "only a finished task (success, failed or cancelled) can be run again" in pending_again.text
    run_all(app_manager)
    done_now = web.post(f"/tasks/{due.id}/run-now", data={"csrf": field})
    assert "is success: run now takes a pending task scheduled for later" in done_now.text
    missing = web.post("/tasks/no-such-task/run-again", data={"csrf": field})
    assert "no-such-task" in missing.text and "Ran again 0 tasks; 1 refused." in missing.text
    assert app_manager.count() == 1


def test_a_unique_tasks_copy_is_refused_while_its_key_is_held(app_manager, client):
    @app_manager.task(mode="thread", name="sync", unique=True)
    def sync(account):
        return account

    done = sync.delay("acme")
    run_all(app_manager)
    holder = sync.apply_async(("acme",), countdown=3600)
    web = client()
    refused = web.post(f"/tasks/{done.id}/run-again", data={"csrf": csrf_of(web)})
    assert refused.status_code == 200
    assert f"is held by unfinished task {holder.id}" in flat(refused)
    assert app_manager.count() == 2


def test_read_only_hides_and_refuses_them(app_manager, client):
    done = app_manager.registry["add"].delay(1, 2)
    run_all(app_manager)
    later = app_manager.registry["add"].apply_async((3, 4), countdown=3600)
    writable = client()
    field = csrf_of(writable)
    web = client(read_only=True)
    set_cookie(web, CSRF_COOKIE, writable.cookies[CSRF_COOKIE])
    for task, action in ((later, "run-now"), (done, "run-again")):
        page = web.get(f"/tasks/{task.id}").text
        assert 'method="post"' not in page and "actions-note" not in page
        answer = web.post(f"/tasks/{task.id}/{action}", data={"csrf": field})
        assert answer.status_code == 403 and "read-only" in answer.text
    assert app_manager.count() == 2 and app_manager.store.get(later.id).eta > time.time()
