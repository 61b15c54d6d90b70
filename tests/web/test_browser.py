"""The dashboard as a person uses it: a real castord, the real `castord web`, Debian's
chromium driven by Playwright. Every wait is on a condition with a deadline
(Playwright's expect, or wait_until); nothing depends on the machine's speed.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(180)

DONE = 60  # seconds a castord has to finish a handful of tiny tasks, on a slow shared machine


def expect(locator):  # noqa: ANN001, ANN201 - Playwright's own types
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def counts(manager) -> dict[str, int]:  # noqa: ANN001
    return {str(k): v for k, v in manager.store.counts_by_status().items()}


def finished(manager, task_ids: list[str]) -> bool:  # noqa: ANN001
    return all((s := manager.store.status(i)) is not None and s.finished for i in task_ids)


def test_overview_counts_match_the_store_and_show_the_castord(daemons, web_servers, webapp, browse):  # noqa: F811
    d = daemons().start(app="webapp:manager")
    d.wait_note("READY=1")
    ran = [webapp.echo.delay(i).id for i in range(3)] + [webapp.boom.delay(f"bad {i}").id for i in range(2)]
    webapp.echo.apply_async((99,), countdown=3600)  # pending, not due
    wait_until(lambda: finished(webapp.manager, ran), DONE, "castord to run the tasks")
    server = web_servers()
    seen = browse()
    seen.page.goto(server.url + "/")

    for status, n in counts(webapp.manager).items():
        expect(seen.page.locator(f'#counts [data-status="{status}"] .n')).to_have_text(f"{n:,}")
    assert counts(webapp.manager) == {"pending": 1, "running": 0, "success": 3, "failed": 2, "cancelled": 0, "waiting": 0}
    row = seen.page.locator("#daemons tbody tr").filter(has_text=str(d.pid))
    expect(row).to_have_count(1)
    expect(row).not_to_contain_text("stale")
    expect(seen.page.locator("#no-daemons")).to_have_count(0)
    # The chart has a bar with the three successes of the last five minutes.
    expect(seen.page.locator("rect.bar-success title").last).to_have_text(re.compile(r"^3 success from 5 to 0"))
    assert seen.outside(server.url) == [] and seen.dialogs == [] and seen.console_errors == []


def test_a_failed_task_is_found_read_retried_and_then_succeeds(daemons, web_servers, webapp, browse, tmp_path):  # noqa: F811
    d = daemons().start(app="webapp:manager")
    d.wait_note("READY=1")
    marker = tmp_path / "fixed"
    task = webapp.flaky_until.delay(str(marker))
    wait_until(lambda: finished(webapp.manager, [task.id]), DONE, "the task to fail")
    assert task.status() == "failed"
    server = web_servers()
    seen = browse()
    page = seen.page

    page.goto(server.url + "/failed")
    group = page.locator("#failed-groups tbody tr").filter(has_text="flaky_until")
    expect(group).to_contain_text("builtins.ValueError")
    expect(group.locator("td.num")).to_have_text("1")
    group.get_by_role("link", name=task.id).click()
    expect(page.locator("#status")).to_have_text("failed")
    expect(page.locator("#traceback")).to_contain_text("Traceback (most recent call last)")
    expect(page.locator("#traceback")).to_contain_text(f"ValueError: no marker yet: {marker}")
    expect(page.locator("#traceback")).to_contain_text('raise ValueError(f"no marker yet: {marker}")')

    marker.touch()
    page.get_by_role("button", name="Retry").click()
    # The detail page updates itself (htmx polling) until the retried task has run.
    expect(page.locator("#status")).to_have_text("success", timeout=DONE * 1000)
    assert task.join(timeout=5) == "fixed"
    expect(page.locator("#timeline")).to_contain_text("success")
    actions = server.events("web.action")
    assert [(a["action"], a["scope"], a["count"], a["task_ids"]) for a in actions] == [("retry", "task", 1, [task.id])]
    assert actions[0]["client"] == "127.0.0.1" and actions[0]["auth"] == "none" and "timestamp" in actions[0]
    assert seen.outside(server.url) == [] and seen.console_errors == []


def test_run_now_then_run_again_from_the_task_page(daemons, web_servers, webapp, browse):  # noqa: F811
    d = daemons().start(app="webapp:manager")
    d.wait_note("READY=1")
    task = webapp.echo.apply_async(("hello",), countdown=3600)
    server = web_servers()
    seen = browse()
    page = seen.page
    page.goto(f"{server.url}/tasks/{task.id}")
    expect(page.locator("#status")).to_have_text("pending")
    page.get_by_role("button", name="Run now").click()
    expect(page.locator("#status")).to_have_text("success", timeout=DONE * 1000)  # the page polls
    page.reload()
    page.get_by_role("button", name="Run again").click()
    expect(page.locator("#rerun-of")).to_contain_text(task.id)
    copy_id = page.url.rsplit("/", 1)[1]
    assert copy_id != task.id
    expect(page.locator("#status")).to_have_text("success", timeout=DONE * 1000)
    assert webapp.manager.get(copy_id).join(timeout=5) == "hello"
    assert [(a["action"], a["task_ids"]) for a in server.events("web.action")] == [
        ("run-now", [task.id]), ("run-again", [task.id])]
    assert seen.outside(server.url) == [] and seen.console_errors == []


def test_bulk_cancel_of_selected_rows_and_of_all_matching_a_filter(web_servers, webapp, browse):
    later = [webapp.echo.apply_async((i,), countdown=3600).id for i in range(5)]
    other = [webapp.boom.apply_async(("not this one",), countdown=3600).id for _ in range(2)]
    server = web_servers()
    seen = browse()
    page = seen.page

    page.goto(server.url + "/tasks?name=echo")
    expect(page.locator("#total")).to_contain_text("5 tasks match")
    chosen = later[:2]
    for task_id in chosen:
        page.locator(f'#tasks tr[data-id="{task_id}"] input[type=checkbox]').check()
    page.locator("#bulk-selected").get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator("#outcome")).to_have_text("Cancelled 2 tasks.")
    assert [webapp.manager.store.status(i) for i in later] == ["cancelled"] * 2 + ["pending"] * 3

    page.goto(server.url + "/tasks?name=echo&status=pending")
    page.locator("#bulk-all").get_by_role("button", name="Cancel all…").click()
    expect(page.locator("#confirm-count")).to_have_text("3")
    expect(page.locator("#confirm-text")).to_contain_text("status pending, name echo")
    assert all(webapp.manager.store.status(i) == "pending" for i in later[2:])  # nothing until confirmed
    page.locator("#confirm").click()
    expect(page.locator("#outcome")).to_have_text("Cancelled 3 tasks.")
    assert all(webapp.manager.store.status(i) == "cancelled" for i in later)
    assert all(webapp.manager.store.status(i) == "pending" for i in other)  # outside the filter
    assert [(a["scope"], a["count"]) for a in server.events("web.action")] == [("selected", 2), ("all", 3)]
    assert server.events("web.action")[1]["filter"] == "status pending, name echo"


def test_search_arguments_filter_by_time_and_page_older_then_newer(web_servers, webapp, browse):
    ids = [webapp.echo.apply_async((f"customer-{i}",), countdown=3600).id for i in range(5)]
    alice = webapp.echo.apply_async(("alice@example.com",), countdown=3600).id
    server = web_servers()
    page = browse().page

    page.goto(server.url + "/tasks")
    page.locator('input[name="args"]').fill("alice@")
    page.locator("#filters").get_by_role("button", name="Filter").click()
    expect(page.locator("#total")).to_contain_text("1 match in the next 50,000 tasks searched: arguments containing 'alice@'")
    expect(page.locator("#tasks tbody tr")).to_have_count(1)
    expect(page.locator(f'#tasks tr[data-id="{alice}"]')).to_be_visible()

    # Enqueued before a minute ago: none of them (all came in just now).
    page.goto(server.url + "/tasks")
    early = webapp.manager.store.get(ids[0]).enqueued_at - 60
    page.locator('input[name="enqueued_to"]').fill(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(early)))
    page.locator("#filters").get_by_role("button", name="Filter").click()
    expect(page.locator("#tasks")).to_contain_text("No task matches.")

    page.goto(server.url + "/tasks?name=echo&limit=2")
    first = page.locator("#tasks tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    page.locator("#next").click()
    expect(page.locator("#total")).to_contain_text("older than the page before")
    page.locator("#next").click()
    page.locator("#prev").click()
    expect(page.locator("#total")).to_contain_text("newer than the page after")
    page.locator("#prev").click()
    expect(page.locator("#prev")).to_have_count(0)  # back at the newest page: nothing newer
    assert page.locator("#tasks tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)") == first
    assert first == [alice, ids[-1]]


def test_pause_stops_a_queue_and_resume_releases_it(daemons, web_servers, webapp, browse):  # noqa: F811
    # One child: its claims come one after another, so a task on another queue enqueued
    # after `held` runs only after a claim that passed `held` over.
    d = daemons().start("--workers", "1", "--threads", "0", app="webapp:manager")
    d.wait_note("READY=1")
    server = web_servers()
    seen = browse()
    page = seen.page
    page.goto(server.url + "/queues")
    row = page.locator('#queues tr[data-queue="default"]')
    expect(row.locator(".queue-state")).to_have_text("active")
    row.get_by_role("button", name="Pause").click()
    expect(row.locator(".queue-state")).to_have_text("paused")
    assert webapp.manager.paused_queues() == {"default"}

    held = webapp.echo.delay("held")
    assert webapp.echo.apply_async(("elsewhere",), queue="other").join(timeout=DONE) == "elsewhere"
    assert held.status() == "pending"
    page.reload()
    expect(row.locator("td.num").first).to_have_text("1")  # still waiting in the paused queue

    row.get_by_role("button", name="Resume").click()
    expect(row.locator(".queue-state")).to_have_text("active")
    assert held.join(timeout=DONE) == "held"
    actions = server.events("web.action")
    assert [(a["action"], a["scope"], a["queue"], a["count"]) for a in actions] == [
        ("pause", "queue", "default", 1), ("resume", "queue", "default", 1)]
    assert seen.outside(server.url) == [] and seen.console_errors == []


def test_a_script_in_task_values_renders_as_text(web_servers, webapp, browse):
    import castor

    script = "<script>alert(1)</script>"
    image = '<img src=x onerror="alert(2)">'
    pending = webapp.echo.apply_async((script,), {"note": image}, countdown=3600)
    failed = webapp.boom.delay(image)
    castor.Worker(webapp.manager, mode="process").run(until_idle=True)
    assert failed.status() == "failed"
    server = web_servers()
    seen = browse()
    page = seen.page

    for path in ("/tasks", f"/tasks/{pending.id}", f"/tasks/{failed.id}", "/failed", "/"):
        page.goto(server.url + path)
        page.wait_for_load_state("load")
        assert page.locator("script").count() == 1  # htmx's, and no other
        assert page.locator("img").count() == 0
    page.goto(server.url + f"/tasks/{pending.id}")
    expect(page.locator("pre.value").first).to_contain_text(script)
    expect(page.locator("pre.value").last).to_contain_text(image.replace('"', '\\"'))
    page.goto(server.url + "/failed")
    expect(page.locator("#failed-groups")).to_contain_text(image)
    assert seen.dialogs == []
    assert seen.outside(server.url) == []


def test_read_only_shows_no_action_and_refuses_a_forged_post(web_servers, webapp, browse):
    import castor

    failed = webapp.boom.delay("for the record")
    webapp.echo.apply_async((1,), countdown=3600)
    castor.Worker(webapp.manager, mode="process").run(until_idle=True)
    server = web_servers("--read-only")
    seen = browse()
    page = seen.page

    page.goto(server.url + "/tasks")
    expect(page.locator("#read-only")).to_be_visible()
    expect(page.locator("#tasks tbody tr")).to_have_count(2)
    assert page.locator("form[method=post]").count() == 0
    assert page.locator("input[type=checkbox]").count() == 0
    page.goto(server.url + f"/tasks/{failed.id}")
    expect(page.locator("#traceback")).to_contain_text("ValueError: for the record")
    assert page.get_by_role("button").count() == 0

    # A POST made by hand, with the browser's own cookies: refused, and nothing changes.
    page.goto(server.url + "/queues")
    expect(page.locator('#queues tr[data-queue="default"]')).to_have_count(1)
    assert page.get_by_role("button").count() == 0  # no Pause
    for path in (f"/tasks/{failed.id}/retry", "/tasks/bulk", "/queues/pause"):
        response = page.request.post(server.url + path, form={"csrf": "forged", "action": "retry", "id": failed.id,
                                                               "scope": "selected", "queue": "default"})
        assert response.status == 403
        assert "read-only" in response.text()
    assert failed.status() == "failed" and webapp.manager.paused_queues() == set()
    assert server.events("web.action") == []


def test_a_form_posted_from_another_page_fails_the_csrf_check(web_servers, webapp, browse):
    task = webapp.echo.apply_async((1,), countdown=3600)
    server = web_servers()
    seen = browse()
    page = seen.page
    page.goto(server.url + f"/tasks/{task.id}")  # the browser now holds the dashboard's cookies
    expect(page.get_by_role("button", name="Cancel")).to_be_visible()

    # Another site's page, with a form aimed at the dashboard's cancel action.
    page.set_content(f'<form method="post" action="{server.url}/tasks/{task.id}/cancel">'
                     '<input name="csrf" value="guessed"><button id="go">go</button></form>')
    with page.expect_navigation():
        page.locator("#go").click()
    expect(page.locator("#error-message")).to_contain_text("CSRF check failed")
    assert task.status() == "pending"


def test_a_token_is_required_and_the_login_form_takes_it(web_servers, webapp, browse, tmp_path):
    token = "correct-horse-battery-staple-42"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    server = web_servers("--token-file", str(token_file))
    seen = browse()
    page = seen.page

    page.goto(server.url + "/tasks?status=failed")
    assert page.url.startswith(server.url + "/login?next=")
    page.locator("#token").fill("wrong-token-of-some-length")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-failed")).to_be_visible()
    page.locator("#token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("h1")).to_have_text("Tasks")
    assert page.url == server.url + "/tasks?status=failed"  # back where it was going
    page.goto(server.url + "/")
    expect(page.locator("h1")).to_have_text("Overview")  # the session cookie holds
    assert server.events("web.login_failed") and server.events("web.login")

    stranger = browse().page
    assert stranger.request.get(server.url + "/", max_redirects=0).status == 303
    refused = stranger.request.post(server.url + f"/tasks/{webapp.echo.apply_async((1,), countdown=60).id}/cancel",
                                    form={"csrf": "x"})
    assert refused.status == 401
    machine = browse(extra_http_headers={"Authorization": f"Bearer {token}"}).page
    machine.goto(server.url + "/queues")
    expect(machine.locator("h1")).to_have_text("Queues")


def test_every_screen_loads_only_from_the_server_and_is_photographed(daemons, web_servers, webapp, browse,  # noqa: F811
                                                                      tmp_path):
    """Screenshots go to tmp_path, and to $CASTOR_SCREENSHOT_DIR when set (docs/images is
    refreshed with: CASTOR_SCREENSHOT_DIR=docs/images pytest tests/web -k photographed)."""
    d = daemons().start(app="webapp:manager")
    d.wait_note("READY=1")
    ran = [webapp.echo.delay({"order": i, "items": ["a", "b"]}).id for i in range(6)]
    failure = webapp.boom.delay("payment provider timed out")
    ran += [failure.id, webapp.flaky_until.delay(str(tmp_path / "never")).id]
    webapp.echo.apply_async(("tomorrow",), countdown=86_400)
    wait_until(lambda: finished(webapp.manager, ran), DONE, "castord to run the tasks")
    server = web_servers()
    seen = browse()
    page = seen.page
    folders = [tmp_path / "screens"] + ([Path(os.environ["CASTOR_SCREENSHOT_DIR"])]
                                        if os.environ.get("CASTOR_SCREENSHOT_DIR") else [])
    screens = {"overview": "/", "queues": "/queues", "tasks": "/tasks", "task": f"/tasks/{failure.id}",
               "failed": "/failed", "periodic": "/periodic"}
    for name, path in screens.items():
        page.goto(server.url + path)
        expect(page.locator("h1")).to_be_visible()
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(folder / f"web-{name}.png"), full_page=True)
    expect(page.locator("#schedules")).to_contain_text("hourly_report")
    expect(page.locator("#schedules")).to_contain_text("every 3600 s")
    page.goto(server.url + "/tasks?status=failed")
    page.locator("#bulk-all").get_by_role("button", name="Retry all…").click()
    expect(page.locator("#confirm-count")).to_have_text("2")
    for folder in folders:
        page.screenshot(path=str(folder / "web-confirm.png"), full_page=True)

    assert all((tmp_path / "screens" / f"web-{n}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
               for n in [*screens, "confirm"])
    assert seen.requests and seen.outside(server.url) == []
    assert seen.dialogs == [] and seen.console_errors == []
