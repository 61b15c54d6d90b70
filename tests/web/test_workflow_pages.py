"""Workflows on the dashboard: a member's task page shows its workflow (kind, state, its
members' statuses counted, each member linked), and a bulk retry says how many workflow
members it left. In-process (Starlette's test client) on both stores, then in chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

import castor
from castor import Worker
from castor.webui import dashboard

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def manager_on(request: pytest.FixtureRequest, db_path: str) -> Iterator[castor.Manager]:
    url = db_path if request.param == "sqlite" else str(request.getfixturevalue("postgres_db_url"))
    manager = castor.Manager(url)

    @manager.task(mode="thread", name="echo")
    def echo(value):
        return value

    @manager.task(mode="thread", name="boom")
    def boom(value):
        raise ValueError(f"bad {value}")

    yield manager
    manager.close()


@pytest.fixture
def web(manager_on: castor.Manager) -> Iterator[TestClient]:
    with TestClient(dashboard(manager_on), follow_redirects=False) as client:
        yield client


def flat(response: Any) -> str:
    return re.sub(r"\s+", " ", response.text)


def test_a_members_page_shows_its_workflow_and_links_every_member(manager_on, web):
    echo, boom = manager_on.registry["echo"], manager_on.registry["boom"]
    workflow = castor.chain(echo.s("a"), castor.group(boom.s(), echo.s()), echo.s()).delay()
    first, failing, sibling, last = workflow.tasks
    page = flat(web.get(f"/tasks/{first.id}"))
    assert f'<span class="id" id="workflow-id">{workflow.id}</span>, a <span id="workflow-kind">chain</span>' in page
    assert "step 1 of 3; 1 of its members still to end" in page
    assert re.search(r'id="workflow-counts">4: 1 pending, 3 waiting<', page)
    Worker(manager_on, mode="thread").run(until_idle=True)
    page = flat(web.get(f"/tasks/{sibling.id}"))
    assert re.search(r'id="workflow-state"><span class="status status-failed">failed</span><', page)
    assert re.search(r'id="workflow-counts">4: 2 success, 1 failed, 1 cancelled<', page)
    for member in (first, failing, last):
        assert f'href="/tasks/{member.id}">{member.id}</a>' in page
    assert f"{sibling.id} (this task)" in page
    assert 'id="workflow"' not in web.get(f"/tasks/{echo.delay(1).id}").text  # a plain task has none


def test_a_workflows_handler_is_listed_last_and_a_big_one_is_counted_in_part(manager_on, web, monkeypatch):
    from castor.webui import pages

    echo, boom = manager_on.registry["echo"], manager_on.registry["boom"]
    handle = boom.apply_async((1,), link=echo.s(), link_error=echo.si("handled"))
    page = flat(web.get(f"/tasks/{handle.id}"))
    assert re.search(r'<td class="num">on failure</td> <td class="id"><a href="[^"]+">[^<]+</a></td>'
                     r' <td><span class="status status-waiting">waiting</span></td></tr> </tbody>', page)
    monkeypatch.setattr(pages, "MEMBERS_SHOWN", 2)
    page = flat(web.get(f"/tasks/{handle.id}"))
    assert re.search(r'id="workflow-counts">3: 1 pending, 1 waiting \(of the first 2\)<', page)
    assert 'id="workflow-more">and 1 more members<' in page


def test_a_bulk_retry_says_how_many_workflow_members_it_left(manager_on, web):
    boom = manager_on.registry["boom"]
    castor.group(boom.s(1), boom.s(2)).delay()
    plain = boom.delay(3)
    Worker(manager_on, mode="thread").run(until_idle=True)
    field = re.search(r'name="csrf" value="([0-9a-f]+)"', web.get("/tasks").text).group(1)
    form = {"csrf": field, "action": "retry", "scope": "all", "status": "failed"}
    ask = web.post("/tasks/bulk", data=form)
    assert re.search(r'id="confirm-count">1<', ask.text)  # the members are not counted in
    done = flat(web.post("/tasks/bulk", data={**form, "confirm": "yes"}))
    assert ('Retried 1 task; 2 workflow members left failed: a member is not retried by hand (it would run '
            'without the results before it); enqueue its workflow again.') in done
    assert plain.status() == "pending" and manager_on.count("failed") == 2


def test_the_task_page_leads_through_a_workflows_members_in_chromium(web_servers, webapp, browse):
    from playwright.sync_api import expect

    workflow = castor.chain(webapp.echo.s("a"), webapp.boom.s(), webapp.echo.s()).delay()
    first, failing, last = workflow.tasks
    Worker(webapp.manager, mode="process").run(until_idle=True)
    server = web_servers()
    seen = browse()
    page = seen.page
    page.goto(f"{server.url}/tasks/{first.id}")
    expect(page.locator("#workflow-id")).to_have_text(workflow.id)
    expect(page.locator("#workflow-kind")).to_have_text("chain")
    expect(page.locator("#workflow-state")).to_have_text("failed")
    expect(page.locator("#workflow-counts")).to_have_text("3: 1 success, 1 failed, 1 cancelled")
    expect(page.locator(f'#workflow-members tr[data-id="{first.id}"]')).to_contain_text("(this task)")
    page.locator(f'#workflow-members tr[data-id="{failing.id}"]').get_by_role("link", name=failing.id).click()
    expect(page.locator("#status")).to_have_text("failed")
    expect(page.locator("#error")).to_contain_text("ValueError: a")
    expect(page.locator("#workflow-id")).to_have_text(workflow.id)
    page.locator(f'#workflow-members tr[data-id="{last.id}"]').get_by_role("link", name=last.id).click()
    expect(page.locator("#status")).to_have_text("cancelled")
    assert seen.outside(server.url) == [] and seen.console_errors == []
