"""The Periodic screen's buttons and the task-detail timeline, as a person uses them: a
real castord, the real `castord web`, Debian's chromium driven by Playwright. Every
wait is on a condition with a deadline; nothing depends on the machine's speed."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import wait_until
from tests.web.test_browser import DONE, expect, finished

pytestmark = pytest.mark.timeout(180)


def test_disable_enable_and_run_now_from_the_periodic_screen(daemons, web_servers, webapp, browse):  # noqa: F811
    d = daemons().start(app="webapp:manager")
    d.wait_note("READY=1")
    server = web_servers()
    seen = browse()
    page = seen.page
    page.goto(server.url + "/periodic")
    row = page.locator('#schedules tr[data-name="hourly_report"]')
    expect(row.locator(".schedule-state")).to_have_text("enabled")

    row.get_by_role("button", name="Disable").click()
    expect(row.locator(".schedule-state")).to_have_text("disabled")
    expect(row.locator(".next-tick")).to_have_text("—")
    assert webapp.manager.disabled_schedules() == {"hourly_report"}
    row.get_by_role("button", name="Enable").click()
    expect(row.locator(".schedule-state")).to_have_text("enabled")
    assert webapp.manager.disabled_schedules() == set()

    row.get_by_role("button", name="Run now").click()
    # The new task's page, which updates itself until the castord has run it.
    expect(page.locator("#status")).to_have_text("success", timeout=DONE * 1000)
    [task] = webapp.manager.tasks(name="hourly_report")
    assert page.url.endswith(f"/tasks/{task.id}") and task.join(timeout=5) == "report"
    assert webapp.manager.store.schedules() == {}  # by hand: no tick recorded
    actions = [(a["action"], a["schedule"]) for a in server.events("web.action")]
    assert actions == [("disable", "hourly_report"), ("enable", "hourly_report"), ("run", "hourly_report")]
    assert seen.outside(server.url) == [] and seen.console_errors == []


def test_read_only_periodic_screen_has_no_buttons(web_servers, webapp, browse):
    server = web_servers("--read-only")
    page = browse().page
    page.goto(server.url + "/periodic")
    expect(page.locator('#schedules tr[data-name="hourly_report"]')).to_contain_text("enabled")
    expect(page.locator("#schedules button")).to_have_count(0)


def test_the_timeline_shows_each_attempt_with_its_host(daemons, web_servers, webapp, browse, tmp_path):  # noqa: F811
    d = daemons().start(app="webapp:manager")
    d.wait_note("READY=1")
    marker = tmp_path / "fixed"
    task = webapp.flaky_until.delay(str(marker))
    wait_until(lambda: finished(webapp.manager, [task.id]), DONE, "the task to fail")
    server = web_servers()
    page = browse().page
    page.goto(server.url + f"/tasks/{task.id}")
    host = socket.gethostname()
    timeline = page.locator("#timeline")
    expect(timeline.locator("li.event-start")).to_have_count(1)
    expect(timeline.locator("li.event-start")).to_contain_text(f"on {host}")
    expect(timeline.locator("li.event-failure")).to_contain_text("attempt 1 failed")

    marker.touch()
    page.get_by_role("button", name="Retry").click()
    expect(page.locator("#status")).to_have_text("success", timeout=DONE * 1000)
    expect(timeline.locator("li.event-start")).to_have_count(2)
    expect(timeline.locator("li.event-start").nth(0)).to_contain_text("attempt 1 started")
    expect(timeline.locator("li.event-start").nth(1)).to_contain_text("attempt 2 started")
    expect(timeline.locator("li.event-start").nth(1)).to_contain_text(f"on {host}")
    expect(timeline.locator("li").last).to_contain_text("success")
    kinds = [c.split("event-")[1] for c in timeline.locator("li").evaluate_all("els => els.map(e => e.className)")]
    assert kinds == ["enqueued", "start", "failure", "start", "end"]
