"""The HTTP API: a FastAPI router to submit, inspect and cancel tasks (`pip install 'castor[web]'`).

    from fastapi import FastAPI
    import castor.web

    app = FastAPI()
    app.include_router(castor.web.router(manager))   # /tasks, /tasks/{id}, /tasks/types, /tasks/health

Every endpoint is a plain `def`: FastAPI runs it in its thread pool, so the
database calls never block the event loop. Tasks are shown by castor.views, as
`castord tasks` shows them. docs/web.md has each endpoint with examples.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, NoReturn

try:
    from fastapi import APIRouter, HTTPException, Query, Request, Response
    from fastapi.params import Depends
    from fastapi.responses import JSONResponse
    from fastapi.routing import APIRoute
    from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
except ImportError as exc:  # pragma: no cover - exercised by a test that hides fastapi
    raise ModuleNotFoundError(
        f"castor.web needs FastAPI ({exc}); install it with: pip install 'castor[web]'", name="fastapi"
    ) from exc

from castor import views
from castor.errors import ConfigurationError, StoreError, StoreUnavailable, TaskIdConflict, UnknownTaskError
from castor.manager import Manager
from castor.states import TaskStatus
from castor.store import Query as StoreQuery
from castor.store import TaskRecord
from castor.task import PRIORITY_RANGE, TaskFunction

__all__ = ["HealthOut", "StrictJSONRoute", "SubmitRequest", "Submitted", "TaskOut", "TaskSummaryOut", "TaskTypeOut",
           "dashboard", "router", "task_out"]


# -- the numbers a request may carry ------------------------------------------------
# Each is checked (422) before anything is stored. Strict: true is not 1, "5" is not 5.

# A century: the longest duration. A longer one overflows what it feeds (a timer's wait,
# threading.TIMEOUT_MAX being ~292 years; or an eta no datetime can show, which made every
# GET that listed the task answer 500).
MAX_SECONDS = 100 * 365 * 86_400
# With retry_backoff up to MAX_BACKOFF, backoff ** retries stays a float (1000 ** 100 is 1e300;
# a float ends near 1.8e308, and the retry's wait computed past it raised OverflowError).
MAX_RETRIES = 100
MAX_BACKOFF = 1000.0
# 1970-01-01T00:00:00Z (an earlier eta means "now" just the same) to 9999-12-31T23:59:59Z,
# the last second a datetime can show.
ETA_RANGE = (0, 253_402_300_799)
# The largest integer SQLite takes (a larger OFFSET raised OverflowError: a 500).
MAX_OFFSET = 2**63 - 1
MAX_LIMIT = 1000

Seconds = Annotated[float, Field(strict=True, ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(strict=True, gt=0, le=MAX_SECONDS, allow_inf_nan=False)]
UnixSeconds = Annotated[float, Field(strict=True, allow_inf_nan=False)]
StrictBool = Annotated[bool, Field(strict=True)]


# -- JSON that is JSON -----------------------------------------------------------------


class StrictJSONRoute(APIRoute):
    """An APIRoute whose JSON bodies must be JSON: NaN, Infinity, a number too large
    for a float (1e400), an integer of more than 4300 digits and bytes that are not
    UTF-8 are a 422, as any other malformed JSON is.

    Python's json reads the first three as floats, and FastAPI's 422 answer repeats
    the input it refused: it cannot encode a NaN, so that answer was a 500. The router
    uses this class; give it to your own routes with
    `APIRouter(route_class=castor.web.StrictJSONRoute)`.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_json(request: Request) -> Response:
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict_json


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_strict_json"):
            body = await self.body()
            self._strict_json = _strict_loads(body)
        return self._strict_json


def _strict_loads(body: bytes) -> Any:
    def refuse(what: str) -> NoReturn:
        # A JSONDecodeError: FastAPI answers it with its 422 "json_invalid", the message in ctx.
        raise json.JSONDecodeError(what, body.decode("utf-8", "replace"), 0)

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            refuse(f"the number {text[:40]} is too large for a float")
        return value

    def integer(text: str) -> int:
        try:
            return int(text)
        except ValueError:  # Python's limit on int(str), 4300 digits unless configured
            refuse(f"an integer of {len(text)} digits is more than this server reads "
                   f"({sys.get_int_max_str_digits()})")

    try:
        return json.loads(body, parse_float=number, parse_int=integer,
                          parse_constant=lambda name: refuse(f"{name} is not JSON: numbers must be finite"))
    except UnicodeDecodeError as exc:  # FastAPI alone answers it 400, unlike any other bad JSON
        refuse(f"the body is not UTF-8 text: {exc.reason} at byte {exc.start}")


# -- bodies ---------------------------------------------------------------------------


def _number_or_iso_instant(value: Any, if_bool: str, if_numeric_string: str) -> Any:
    """A JSON number or an ISO 8601 string, as sent: true/false and numbers sent as
    strings are refused with the field's own message (pydantic would coerce both)."""
    if isinstance(value, bool):
        raise ValueError(if_bool)
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value  # ISO 8601, checked by AwareDatetime
        raise ValueError(if_numeric_string)
    return value


class SubmitRequest(BaseModel):
    """POST {prefix}: a call of a registered task, with apply_async's per-call options.

    Options left out (or null) take the task's defaults. `retry_on` is not offered:
    it takes exception classes, which JSON cannot name safely.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The registered task name (GET {prefix}/types lists them).")
    args: list[Any] = Field(default_factory=list, description="Positional arguments.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")
    countdown: Seconds | None = Field(default=None, description="Run no sooner than this many seconds from now.")
    eta: AwareDatetime | UnixSeconds | None = Field(
        default=None, description="Run no sooner than this instant: ISO 8601 with a timezone, or Unix seconds "
                                  "(a JSON number), from 1970 to 9999.")
    priority: Annotated[int, Field(strict=True, ge=PRIORITY_RANGE[0], le=PRIORITY_RANGE[1])] | None = Field(
        default=None, description="Higher runs first.")
    queue: str | None = None
    task_id: str | None = Field(default=None, description="Your own id for the task (must be new).")
    timeout: PositiveSeconds | None = Field(default=None, description="Seconds this run may take.")
    retries: Annotated[int, Field(strict=True, ge=0, le=MAX_RETRIES)] | None = None
    retry_delay: Seconds | None = None
    retry_backoff: Annotated[float, Field(strict=True, ge=1, le=MAX_BACKOFF, allow_inf_nan=False)] | None = None
    retry_max_delay: Seconds | None = None
    retry_jitter: StrictBool | None = None
    result_ttl: Seconds | None = Field(default=None, description="Seconds a success is kept (0: deleted at once).")
    failure_ttl: PositiveSeconds | None = Field(
        default=None, description="Seconds a failure or cancellation is kept.")
    unique: StrictBool | str | None = Field(
        default=None, description="true: a pending or running twin with the same arguments is returned instead; "
                          "a string: the twin's key.")
    cache_ttl: PositiveSeconds | None = Field(
        default=None, description="Return a success with the same arguments that finished within this many seconds.")
    expires: PositiveSeconds | AwareDatetime | None = Field(
        default=None, description="Not started by then, the task ends cancelled (expired) without running: "
                                  "seconds from now (a JSON number), or an ISO 8601 instant with a timezone.")

    @field_validator("eta", mode="before")
    @classmethod
    def _eta_is_an_instant_or_a_number(cls, value: Any) -> Any:
        # pydantic would read a numeric string as a timestamp, in milliseconds past 2e10.
        return _number_or_iso_instant(
            value, "eta must be an ISO 8601 instant with a timezone or Unix seconds, not true or false",
            f"eta {value!r}: a string is ISO 8601 with a timezone (2030-01-01T09:00:00Z); "
            "send Unix seconds as a JSON number")

    @field_validator("expires", mode="before")
    @classmethod
    def _expires_seconds_or_an_instant(cls, value: Any) -> Any:
        # A number is seconds from now, never a Unix time (pydantic would read 0 as 1970).
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not value > 0:
            raise ValueError(f"expires must be more than 0 seconds, not {value!r}")
        return _number_or_iso_instant(
            value, "expires must be seconds (a JSON number) or an ISO 8601 instant, not true or false",
            f"expires {value!r}: send seconds as a JSON number, or an ISO 8601 instant "
            "with a timezone (2030-01-01T09:00:00Z)")

    @field_validator("eta")
    @classmethod
    def _eta_in_range(cls, value: datetime | float | None) -> datetime | float | None:
        seconds = value.timestamp() if isinstance(value, datetime) else value
        if seconds is not None and not ETA_RANGE[0] <= seconds <= ETA_RANGE[1]:
            raise ValueError("eta must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z")
        return value


# The body's fields that are apply_async options (checked against CALL_OPTIONS by a test).
SUBMIT_OPTIONS = tuple(f for f in SubmitRequest.model_fields if f not in ("name", "args", "kwargs"))


class Submitted(BaseModel):
    id: str
    name: str
    status: TaskStatus | None = Field(
        description="The status just after the submit (an eager Manager has run it already; a unique "
                    "twin or a cached success may be further on). null: it already finished and was "
                    "deleted (result_ttl=0).")
    url: str = Field(description="Where to GET the task.")


class _TaskBase(BaseModel):
    id: str
    name: str
    queue: str
    status: TaskStatus
    priority: int
    attempts: int = Field(description="How many times a worker claimed it.")
    lost: int = Field(description="How many times its worker vanished while running it.")
    enqueued_at: str = Field(description="ISO 8601, UTC.")
    eta: str = Field(description="Not run before this instant.")
    started_at: str | None
    finished_at: str | None
    progress: float | None = Field(description="The latest castor.progress() fraction.")


class TaskSummaryOut(_TaskBase):
    error: str | None = Field(description="'type: message' of a failure.")


class ErrorOut(BaseModel):
    type: str = Field(description="The exception's module.qualname.")
    message: str
    traceback: str = ""
    args: list[Any] | None = None


class TaskOut(_TaskBase):
    mode: str
    daemon: bool
    progress_message: str | None
    cancel_requested: bool
    result: Any = Field(default=None, description="The result of a success, when JSON carries it exactly.")
    result_repr: str | None = Field(
        default=None, description="Instead of `result`, its repr, when JSON cannot carry it (a pickled object, a "
                          "tuple, NaN...); or why it could not be decoded.")
    error: ErrorOut | None = Field(description="The last failure, traceback included.")
    history: list[dict[str, Any]] = Field(description="One {attempt, type, message, at, started_at, owner} per "
                                          "attempt that failed or lost its worker (lost: true).")


class TaskTypeOut(BaseModel):
    name: str
    mode: str
    daemon: bool
    queue: str
    priority: int
    timeout: float | None
    retries: int
    unique: bool
    cache_ttl: float | None
    validate_: bool = Field(alias="validate", description="Arguments are checked against the type hints.")
    schedule: str | None = Field(description="A periodic task's schedule, e.g. \"every 60 s\".")
    doc: str | None = Field(description="The first line of the function's docstring.")


class HealthOut(BaseModel):
    status: str = Field(description="\"ok\", or \"unavailable\" (HTTP 503) when the database cannot be read.")
    error: str | None = None
    counts: dict[str, int] = Field(default_factory=dict, description="Tasks per status.")
    queue_depth: dict[str, int] = Field(default_factory=dict, description="Pending tasks per queue.")
    oldest_due_wait_s: float | None = Field(
        default=None,
        description="How long the oldest task that is due has waited: workers falling behind, or none running.")
    castords: int = Field(default=0, description="castords with a fresh heartbeat in the database.")


# -- the router -----------------------------------------------------------------------


def router(
    manager: Manager,
    *,
    prefix: str = "/tasks",
    tags: Sequence[str | Enum] | None = ("tasks",),
    dependencies: Sequence[Depends] | None = None,
) -> APIRouter:
    """A FastAPI router on `manager`: submit by name, get, cancel, list, task types, health.

    `prefix` is where it lives ("/tasks"; "" for the root), `tags` its OpenAPI tags,
    `dependencies` run before every endpoint (authentication: `[Depends(check_token)]`).
    Include it with `app.include_router(...)`; include several for several Managers,
    each under its own prefix.
    """
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ConfigurationError(f"castor.web.router: prefix must start with '/' and not end with one, "
                                 f"e.g. '/tasks', not {prefix!r}")
    api = APIRouter(prefix=prefix, tags=list(tags or []), dependencies=list(dependencies or []),
                    route_class=StrictJSONRoute)
    root = "" if prefix else "/"
    missing: dict[int | str, dict[str, Any]] = {
        404: {"description": "No task with that id (never enqueued, or purged)."}}
    unavailable: dict[int | str, dict[str, Any]] = {
        503: {"description": "The database is locked or cannot be read; retry."}}

    @api.post(root, status_code=202, response_model=Submitted, responses={
        404: {"description": "No task of that name is registered in this process."},
        409: {"description": "task_id names a task that exists already."},
        422: {"description": "Bad arguments or options."}, **unavailable})
    def submit_task(body: SubmitRequest, request: Request, response: Response) -> Submitted:
        """Enqueue a call of a registered task; 202 with its id (the Location header points at it)."""
        with _http_errors():
            fn = _task_function(manager, body.name)
            _check_signature(fn, body.args, body.kwargs)
            options = body.model_dump(include=set(SUBMIT_OPTIONS), exclude_none=True)
            try:
                task = fn.apply_async(body.args, body.kwargs, **options)
            except TaskIdConflict:
                raise HTTPException(409, f"a task with id {body.task_id!r} exists already; "
                                         "task ids must be unique") from None
            except (TypeError, ValueError) as exc:
                # InvalidArguments (validate=True), SerializationError, ConfigurationError
                # (a bad option), and a bad countdown or eta.
                raise HTTPException(422, str(exc)) from None
            url = f"{request.url.path.rstrip('/')}/{task.id}"
            response.headers["Location"] = url
            return Submitted(id=task.id, name=fn.name, status=manager.store.status(task.id), url=url)

    @api.get(root, response_model=list[TaskSummaryOut], responses=unavailable)
    def list_tasks(
        response: Response,
        status: TaskStatus | None = None,
        name: str | None = None,
        queue: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        after: Annotated[str | None, Query(max_length=200, description=(
            "Page by key: the X-Castor-Next-After header of the page before. Stays fast on any "
            "page, where offset reads every row it skips."))] = None,
    ) -> list[dict[str, Any]]:
        """Tasks, newest first, filtered by status, task name and queue. A full page carries
        X-Castor-Next-After: pass it as `after` for the next one."""
        key = _page_key(after)
        if key is not None and offset:
            raise HTTPException(422, "after and offset do not combine: page by after alone")
        with _http_errors():
            records = manager.store.list(StoreQuery(status, name, queue), limit=limit, offset=offset, after=key)
            if len(records) == limit:
                response.headers[NEXT_AFTER] = f"{records[-1].enqueued_at!r}:{records[-1].id}"
            return [views.summary(r) for r in records]

    # Before /{task_id}, so that these two names are not read as task ids.
    @api.get("/types", response_model=list[TaskTypeOut])
    def task_types() -> list[dict[str, Any]]:
        """The tasks registered in this process: what POST can submit by name."""
        manager.import_tasks()
        return [views.task_type(manager, fn) for _, fn in sorted(manager.registry.items())]

    @api.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
    def health() -> Any:
        """Whether the database answers, with counts per status, queue depth and live castords."""
        try:
            data = views.stats(manager)
            castords = len(views.live_daemons(manager))
        except StoreError as exc:
            body = HealthOut(status="unavailable", error=str(exc))
            return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "1"})
        return HealthOut(status="ok", counts=data["counts"], queue_depth=data["queue_depth"],
                         oldest_due_wait_s=data["oldest_due_wait_s"], castords=castords)

    @api.get("/{task_id}", response_model=TaskOut, responses={**missing, **unavailable})
    def get_task(task_id: str) -> TaskOut:
        """One task: status, progress, attempts, timestamps, and its result or error."""
        with _http_errors():
            return task_out(_record(manager, task_id))

    @api.delete("/{task_id}", response_model=TaskOut, responses={
        202: {"model": TaskOut, "description": "It is running: its worker is stopping it."},
        409: {"description": "It already finished (success, failed or cancelled)."},
        **missing, **unavailable})
    def cancel_task(task_id: str, response: Response) -> TaskOut:
        """Cancel a task (the record stays): 200 when it will never run, 202 when its
        worker is stopping it, 409 when it had already finished."""
        with _http_errors():
            before = _record(manager, task_id).status
            if before.finished:
                _already_finished(task_id, before)
            after = manager.cancel(task_id)
            if after.finished and after != TaskStatus.CANCELLED:
                _already_finished(task_id, after)  # it finished in the meantime
            response.status_code = 202 if after == TaskStatus.RUNNING else 200
            return task_out(_record(manager, task_id))

    return api


def dashboard(manager: Manager, *, read_only: bool = False, token: str | None = None) -> Any:
    """The web dashboard's ASGI app, to mount (castor.webui.dashboard; docs/web-dashboard.md)."""
    from castor.webui import dashboard as build

    return build(manager, read_only=read_only, token=token)


NEXT_AFTER = "X-Castor-Next-After"


def _page_key(text: str | None) -> tuple[float, str] | None:
    """`ENQUEUED_AT:ID` (as X-Castor-Next-After gives it) as a Store.list key; 422 if it is not one."""
    if text is None:
        return None
    at, _, task_id = text.partition(":")
    try:
        when = float(at)
    except ValueError:
        when = math.nan
    if not task_id or not math.isfinite(when):
        raise HTTPException(422, f"after must be a page key ENQUEUED_AT:ID (the {NEXT_AFTER} header), "
                                 f"not {text[:60]!r}")
    return when, task_id


def task_out(record: TaskRecord) -> TaskOut:
    """The full view of a task, as GET {prefix}/{id} returns it."""
    result = views.decode(record.serializer, record.result)
    error = record.error
    if error is not None and not views.json_exact(error):
        error = {**error, "args": None}  # exception arguments JSON cannot carry (NaN...)
    return TaskOut.model_validate({
        **views.summary(record), "mode": record.mode, "daemon": record.daemon,
        "progress_message": record.progress_message, "cancel_requested": record.cancel_requested,
        "result": result.value, "result_repr": result.text, "error": error, "history": record.history,
    })


# -- helpers --------------------------------------------------------------------------


@contextmanager
def _http_errors() -> Iterator[None]:
    """castor's errors as HTTP statuses: an unknown id 404, a busy or broken database 503."""
    try:
        yield
    except UnknownTaskError as exc:
        raise HTTPException(404, str(exc)) from None
    except StoreUnavailable as exc:  # busy (on SQLite: locked): worth a retry soon
        raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
    except StoreError as exc:  # damaged, read-only, gone: not a retry's to fix
        raise HTTPException(503, str(exc)) from None


def _record(manager: Manager, task_id: str) -> TaskRecord:
    record = manager.store.get(task_id)
    if record is None:
        raise UnknownTaskError.missing(task_id)
    return record


def _already_finished(task_id: str, status: TaskStatus) -> NoReturn:
    raise HTTPException(409, f"task {task_id} already finished ({status}); nothing to cancel")


def _task_function(manager: Manager, name: str) -> TaskFunction[..., Any]:
    manager.import_tasks()
    fn = manager.registry.get(name)
    if fn is not None:
        return fn
    close = difflib.get_close_matches(name, list(manager.registry), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    known = ", ".join(sorted(manager.registry)[:20]) or "none"
    raise HTTPException(404, f"no task named {name!r} is registered in this process.{hint} "
                             f"Registered tasks: {known} (GET .../types lists them)")


def _check_signature(fn: TaskFunction[..., Any], args: list[Any], kwargs: dict[str, Any]) -> None:
    """A call that cannot bind to the function is refused now (422), not failed later by a worker."""
    try:
        signature = inspect.signature(fn.fn)
    except (TypeError, ValueError):  # a builtin or callable without one: let it through
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise HTTPException(422, f"bad arguments for {fn.name}: {exc}") from None
