"""The dashboard as a Starlette (ASGI) application: routes, rendering, and the checks
every request passes (token, CSRF, read-only) before a screen or an action runs.

Screens read through castor/webui/pages.py, actions go through actions.py; both are
plain functions run in Starlette's thread pool, so database calls never block the
event loop. Everything the templates show is escaped (Jinja autoescape), and the
Content-Security-Policy lets a page load scripts, styles and images from this
server only: no inline script runs, even one that escaping missed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from castor.errors import StoreError, UnknownTaskError
from castor.webui import actions, pages
from castor.webui.filters import STATUSES, BadFilter, TaskFilter, page_key
from castor.webui.periodic_actions import SCHEDULE_ACTIONS, act_on_schedule
from castor.webui.security import CSRF_COOKIE, CSRF_FIELD, SESSION_COOKIE, Guard, new_csrf_cookie

if TYPE_CHECKING:
    from castor.manager import Manager

HERE = Path(__file__).parent
# A form bigger than this is refused (a bulk selection of 1,000 ids is ~40 KB).
MAX_FORM_BYTES = 1_000_000
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Form(dict[str, list[str]]):
    """A submitted form: every value of each field."""

    def first(self, key: str) -> str | None:
        values = self.get(key)
        return values[0] if values else None

    def single(self) -> dict[str, str]:
        return {k: v[0] for k, v in self.items() if v}


class HTTPProblem(Exception):
    """Ends a request with an error page: status and what to tell the person."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Context:
    """One request as a screen sees it."""

    request: Request
    app: DashboardApp
    csrf: str
    who: dict[str, Any]
    form: Form = field(default_factory=Form)

    @property
    def base(self) -> str:
        return str(self.request.scope.get("root_path", "")).rstrip("/")

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        page = self.app.templates.get_template(template)
        html = page.render(base=self.base, csrf=self.csrf, csrf_field=CSRF_FIELD, read_only=self.app.read_only,
                           login_required=self.app.guard.required, path=self.request.url.path, **values)
        return HTMLResponse(html, status_code=status)

    def error(self, status: int, message: str) -> HTMLResponse:
        return self.render("error.html", status=status, code=status, message=message)

    def redirect(self, path: str) -> RedirectResponse:
        return RedirectResponse(self.base + path, status_code=303)


Handler = Callable[[Context], Response]


class DashboardApp:
    def __init__(self, manager: Manager, *, read_only: bool, token: str | None):
        self.manager = manager
        self.read_only = read_only
        self.guard = Guard(token)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.templates.filters.update(age=age, when=when_text, number=number, rate=rate, page_key=page_key)

    def routes(self) -> list[BaseRoute]:
        page, act, public = self.endpoint, self.action_endpoint, self.public_endpoint
        return [
            Route("/", page(self.overview), name="overview"),
            Route("/queues", page(self.queues)),
            Route("/queues/{action}", act(self.queue_action), methods=["POST"]),
            Route("/tasks", page(self.tasks)),
            Route("/tasks/bulk", act(self.bulk), methods=["POST"]),
            Route("/tasks/{task_id}", page(self.task)),
            Route("/tasks/{task_id}/{action}", act(self.task_action), methods=["POST"]),
            Route("/failed", page(self.failed)),
            Route("/periodic", page(self.periodic)),
            Route("/periodic/{action}", act(self.schedule_action), methods=["POST"]),
            Route("/login", public(self.login), methods=["GET", "POST"]),
            Route("/logout", public(self.logout), methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]

    # -- the checks around every endpoint ------------------------------------------------

    def endpoint(self, handler: Handler, *, action: bool = False, public: bool = False) -> Callable[
            [Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            cookie = request.cookies.get(CSRF_COOKIE)
            fresh = None if cookie else new_csrf_cookie()
            auth = self._authenticated(request)
            ctx = Context(request, self, self.guard.csrf_field(cookie or fresh or ""),
                          who={"client": request.client.host if request.client else None, "auth": auth})
            try:
                if auth is None and not public:
                    raise _LoginNeeded
                if request.method == "POST":
                    if action and self.read_only:
                        raise HTTPProblem(403, "this dashboard is read-only (castord web --read-only): "
                                               "no action is taken")
                    ctx.form = await _read_form(request)
                    if not self.guard.csrf_valid(cookie, ctx.form.first(CSRF_FIELD)):
                        raise HTTPProblem(403, "the form's CSRF check failed (it came from another page, or "
                                               "the dashboard restarted): reload the page and try again")
                response = await run_in_threadpool(handler, ctx)
            except _LoginNeeded:
                response = self._login_needed(ctx)
            except HTTPProblem as exc:
                response = ctx.error(exc.status, str(exc))
            except (BadFilter, actions.RefusedAction) as exc:
                response = ctx.error(400, str(exc))
            except StoreError as exc:
                response = ctx.error(503, f"the database cannot be read: {exc}")
            if fresh is not None:
                response.set_cookie(CSRF_COOKIE, fresh, httponly=True, samesite="lax", path=ctx.base or "/")
            response.headers.update(SECURITY_HEADERS)
            return response

        return run

    def action_endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return self.endpoint(handler, action=True)

    def public_endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return self.endpoint(handler, public=True)

    def _authenticated(self, request: Request) -> str | None:
        """How this request proved itself: "bearer", "session", "none" (no token set); None: it did not."""
        if not self.guard.required:
            return "none"
        if self.guard.bearer_matches(request.headers.get("authorization")):
            return "bearer"
        if self.guard.session_valid(request.cookies.get(SESSION_COOKIE)):
            return "session"
        return None

    def _login_needed(self, ctx: Context) -> Response:
        if ctx.request.method == "GET" and not ctx.request.headers.get("hx-request"):
            target = ctx.request.url.path + (f"?{ctx.request.url.query}" if ctx.request.url.query else "")
            return ctx.redirect(f"/login?next={quote(target, safe='')}")
        response = ctx.error(401, "a token is required: log in, or send Authorization: Bearer TOKEN")
        response.headers["WWW-Authenticate"] = 'Bearer realm="castor"'
        return response

    # -- screens ------------------------------------------------------------------------

    def overview(self, ctx: Context) -> Response:
        return ctx.render("overview.html", nav="overview", **pages.overview(self.manager))

    def queues(self, ctx: Context) -> Response:
        return ctx.render("queues.html", nav="queues", **pages.queues(self.manager))

    def tasks(self, ctx: Context) -> Response:
        task_filter = TaskFilter.parse(ctx.request.query_params)
        return ctx.render("tasks.html", nav="tasks", statuses=STATUSES, **pages.tasks(self.manager, task_filter))

    def task(self, ctx: Context) -> Response:
        task_id = ctx.request.path_params["task_id"]
        record = self.manager.store.get(task_id)
        if record is None:
            raise HTTPProblem(404, f"task {task_id} is not in the database (purged, or never enqueued)")
        return ctx.render("task.html", nav="tasks", task=pages.task(record, now=time.time()),
                          workflow=pages.workflow(self.manager, record))

    def failed(self, ctx: Context) -> Response:
        return ctx.render("failed.html", nav="failed", **pages.failed(self.manager))

    def periodic(self, ctx: Context) -> Response:
        return ctx.render("periodic.html", nav="periodic", **pages.periodic(self.manager))

    # -- actions ------------------------------------------------------------------------

    def task_action(self, ctx: Context) -> Response:
        task_id, action = ctx.request.path_params["task_id"], ctx.request.path_params["action"]
        if action not in actions.TASK_ACTIONS:
            raise HTTPProblem(404, f"no action {action!r}; the actions are {', '.join(actions.TASK_ACTIONS)}")
        outcome = actions.act_on(self.manager, action, [task_id])
        actions.log_action(outcome, who=ctx.who, scope="task")
        if outcome.created:  # run again: show the copy (its page links back to this one)
            return ctx.redirect(f"/tasks/{quote(outcome.created[0], safe='')}")
        if outcome.done and action != "delete":
            return ctx.redirect(f"/tasks/{quote(task_id, safe='')}")
        return ctx.render("result.html", nav="tasks", outcome=outcome, back=f"/tasks/{task_id}"
                          if not outcome.done else "/tasks")

    def queue_action(self, ctx: Context) -> Response:
        action = ctx.request.path_params["action"]
        if action not in actions.QUEUE_ACTIONS:
            raise HTTPProblem(404, f"no queue action {action!r}; they are {', '.join(actions.QUEUE_ACTIONS)}")
        queue = ctx.form.first("queue") or ""
        if not queue:
            raise HTTPProblem(400, "no queue named: the form must carry queue=NAME")
        actions.act_on_queue(self.manager, action, queue, who=ctx.who)
        return ctx.redirect("/queues")

    def schedule_action(self, ctx: Context) -> Response:
        action = ctx.request.path_params["action"]
        if action not in SCHEDULE_ACTIONS:
            raise HTTPProblem(404, f"no schedule action {action!r}; they are {', '.join(SCHEDULE_ACTIONS)}")
        name = ctx.form.first("name") or ""
        try:
            task_id = act_on_schedule(self.manager, action, name, who=ctx.who)
        except UnknownTaskError as exc:
            raise HTTPProblem(404, str(exc)) from None
        return ctx.redirect(f"/tasks/{quote(task_id, safe='')}" if task_id else "/periodic")

    def bulk(self, ctx: Context) -> Response:
        form = ctx.form
        action = form.first("action") or ""
        if action not in actions.ACTIONS:
            raise HTTPProblem(400, f"no action {action!r}; the actions are {', '.join(actions.ACTIONS)}")
        task_filter = TaskFilter.parse(form.single())
        back = "/tasks" + task_filter.link()
        if form.first("scope") == "all":
            query = task_filter.query
            if form.first("confirm") != "yes":
                count = actions.matching(self.manager, action, query)
                return ctx.render("confirm.html", nav="tasks", action=action, count=count, filter=task_filter,
                                  back=back)
            outcome = actions.act_on_all(self.manager, action, query)
            actions.log_action(outcome, who=ctx.who, scope="all", filter_text=task_filter.describe())
        else:
            ids = form.get("id") or []
            if not ids:
                raise HTTPProblem(400, "no task selected: tick the tasks to act on, or use “all matching”")
            outcome = actions.act_on(self.manager, action, ids)
            actions.log_action(outcome, who=ctx.who, scope="selected")
        return ctx.render("result.html", nav="tasks", outcome=outcome, back=back)

    # -- login --------------------------------------------------------------------------

    def login(self, ctx: Context) -> Response:
        target = _local_target(ctx.base, ctx.form.first("next") or ctx.request.query_params.get("next"))
        if not self.guard.required:
            return RedirectResponse(target, status_code=303)
        if ctx.request.method == "GET":
            return ctx.render("login.html", target=target, failed=False)
        if not self.guard.token_matches(ctx.form.first("token")):
            actions.log.warning("web.login_failed", **ctx.who)
            return ctx.render("login.html", status=401, target=target, failed=True)
        actions.log.info("web.login", **{**ctx.who, "auth": "token"})
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, self.guard.new_session(), httponly=True, samesite="lax",
                            path=ctx.base or "/")
        return response

    def logout(self, ctx: Context) -> Response:
        response = ctx.redirect("/login")
        response.delete_cookie(SESSION_COOKIE, path=ctx.base or "/")
        return response


class _LoginNeeded(Exception):
    pass


def _local_target(base: str, target: str | None) -> str:
    """Where to go after logging in: a path of this dashboard only (no open redirect)."""
    if target and target.startswith(base + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return base + "/"


async def _read_form(request: Request) -> Form:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise HTTPProblem(415, "actions take an HTML form (application/x-www-form-urlencoded)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPProblem(413, f"the form is larger than {MAX_FORM_BYTES:,} bytes")
    form = Form()
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=10_000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPProblem(400, f"the form cannot be read: {exc}") from None
    for key, value in pairs:
        form.setdefault(key, []).append(value)
    return form


# -- template filters ---------------------------------------------------------------------


def age(seconds: float | None) -> str:
    """12.3 s, 4 min 5 s, 2 h 3 min, 3 d 4 h."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def when_text(iso: str | None) -> str:
    """2026-11-23T11:30:23.348+00:00 → 2026-11-23 11:30:23 UTC."""
    return "—" if not iso else iso[:19].replace("T", " ") + " UTC"


def number(n: int | float | None) -> str:
    return "—" if n is None else f"{n:,}"


def rate(per_second: float | None, cap: int) -> str:
    """0.35, 12, 1,250 (per second); None: more than `cap` in the last minute."""
    if per_second is None:
        return f"> {cap:,}/min"
    return f"{per_second:.2f}".rstrip("0").rstrip(".") if per_second < 10 else f"{per_second:,.0f}"


def dashboard(manager: Manager, *, read_only: bool = False, token: str | None = None) -> Starlette:
    """The dashboard's ASGI app on `manager`, to serve (`castord web`) or mount.

    read_only=True hides every action and refuses them (403). With `token`, every
    request must carry it (Authorization: Bearer TOKEN) or have logged in with it.
    """
    app = DashboardApp(manager, read_only=read_only, token=token)
    return Starlette(routes=app.routes())
