"""The Periodic screen's actions over HTTP, in-process, on a real beaver-db file:
disable / enable / run now, each refused without CSRF, in --read-only, or for a
name the app does not register. test_browser.py clicks the same buttons."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

import castor
from castor.periodic import Scheduler
from castor.webui import dashboard
from castor.webui.security import CSRF_COOKIE
from tests.web.test_http import csrf_of, define_tasks, flat, set_cookie

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def app_manager(manager: castor.Manager) -> castor.Manager:
    return define_tasks(manager)


@pytest.fixture
def web(app_manager: castor.Manager) -> Iterator[TestClient]:
    with TestClient(dashboard(app_manager), follow_redirects=False) as client:
        yield client


def row_of(web: TestClient, name: str) -> str:
    match = re.search(rf'<tr data-name="{name}".*?</tr>', flat(web.get("/periodic")))
    assert match, f"no row for {name}"
    return match.group(0)


def test_disable_then_enable_from_the_page(app_manager, web):
    field = csrf_of(web, "/periodic")
    assert "enabled" in row_of(web, "minutely") and ">Disable<" in row_of(web, "minutely")
    answer = web.post("/periodic/disable", data={"csrf": field, "name": "minutely"})
    assert answer.status_code == 303 and answer.headers["location"] == "/periodic"
    assert app_manager.disabled_schedules() == {"minutely"}
    row = row_of(web, "minutely")
    assert "disabled" in row and ">Enable<" in row
    assert web.post("/periodic/enable", data={"csrf": field, "name": "minutely"}).status_code == 303
    assert app_manager.disabled_schedules() == set()


def test_a_disabled_schedule_fires_nothing_while_the_page_says_so(app_manager, web):
    field = csrf_of(web, "/periodic")
    web.post("/periodic/disable", data={"csrf": field, "name": "minutely"})
    now = time.time()
    assert Scheduler(app_manager, now=now).fire_due(now + 61) == []
    assert app_manager.count(name="minutely") == 0


def test_run_now_enqueues_the_task_and_shows_it(app_manager, web):
    field = csrf_of(web, "/periodic")
    answer = web.post("/periodic/run", data={"csrf": field, "name": "minutely"})
    assert answer.status_code == 303
    [task] = app_manager.tasks(name="minutely")
    assert answer.headers["location"] == f"/tasks/{task.id}" and task.status() == "pending"
    assert app_manager.store.schedules() == {}  # no tick recorded: the ticks did not move


def test_an_unknown_schedule_or_action_is_a_clear_404(app_manager, web):
    field = csrf_of(web, "/periodic")
    answer = web.post("/periodic/disable", data={"csrf": field, "name": "nope"})
    assert answer.status_code == 404 and "no periodic task named &#39;nope&#39;" in answer.text
    assert web.post("/periodic/explode", data={"csrf": field, "name": "minutely"}).status_code == 404
    assert app_manager.disabled_schedules() == set() and app_manager.count() == 0


def test_without_csrf_nothing_happens(app_manager, web):
    csrf_of(web, "/periodic")
    for action in ("disable", "run"):
        assert web.post(f"/periodic/{action}", data={"name": "minutely"}).status_code == 403
    assert app_manager.disabled_schedules() == set() and app_manager.count() == 0


def test_read_only_shows_no_button_and_refuses_the_actions(app_manager, web):
    field = csrf_of(web, "/periodic")  # a valid pair, from a dashboard that allows actions
    with TestClient(dashboard(app_manager, read_only=True), follow_redirects=False) as read_only:
        set_cookie(read_only, CSRF_COOKIE, web.cookies[CSRF_COOKIE])
        page = read_only.get("/periodic").text
        assert "minutely" in page and 'method="post"' not in page
        for action in ("disable", "enable", "run"):
            answer = read_only.post(f"/periodic/{action}", data={"csrf": field, "name": "minutely"})
            assert answer.status_code == 403 and "read-only" in answer.text
    assert app_manager.disabled_schedules() == set() and app_manager.count() == 0
