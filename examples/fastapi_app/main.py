"""The web application: the seed's two endpoints, plus castor's whole task API.

    uvicorn examples.fastapi_app.main:app
    gunicorn --preload -w 2 -k uvicorn.workers.UvicornWorker examples.fastapi_app.main:app

POST /calculate enqueues complex_calculation and answers at once (202);
GET /calculations/{id} shows how it is going, and GET /calculations/{id}/wait
waits for it without blocking the event loop. castor.web.router(manager) adds
/tasks: submit any task by name, get, cancel, list, task types and health.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

import castor
import castor.web
from examples.fastapi_app.tasks import complex_calculation, manager


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Runs in each server process (after the fork, under gunicorn --preload).
    yield
    # castor's connections, and the BeaverDB that manager.db opened in this process.
    manager.close()


app = FastAPI(title="castor FastAPI example", lifespan=lifespan)
app.router.route_class = castor.web.StrictJSONRoute  # NaN, Infinity, 1e400 in a body: 422
app.include_router(castor.web.router(manager))

# A 64-bit integer, and only an integer (not true, not "5").
Int64 = Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]
NOT_FOUND = {404: {"description": "No task with that id."}}


class Calculation(BaseModel):
    a: Int64 = 100
    b: Int64 = 250


class TaskResponse(BaseModel):
    task_id: str
    status: str
    result: int | None = None
    error: str | None = None


def _response(task: castor.Task[int]) -> TaskResponse:
    record = task.info()  # one read: status, result and error agree
    response = TaskResponse(task_id=task.id, status=record.status)
    if record.status == "success":
        response.result = task.result
    elif record.error:
        response.error = f"{record.error['type']}: {record.error['message']}"
    return response


# Plain `def` endpoints: FastAPI runs them in its thread pool, so castor's
# database calls do not block the event loop.
@app.post("/calculate", response_model=TaskResponse, status_code=202)
def calculate(calculation: Calculation) -> TaskResponse:
    """Enqueue a calculation and return its id at once."""
    task = complex_calculation.delay(calculation.a, calculation.b)
    return TaskResponse(task_id=task.id, status=task.status())


@app.get("/calculations/{task_id}", response_model=TaskResponse, responses=NOT_FOUND)
def get_calculation(task_id: str) -> TaskResponse:
    """How a calculation is going: its status, then its result or error."""
    task = manager.get(task_id)
    if task is None:
        raise HTTPException(404, f"no task {task_id}")
    return _response(task)


@app.get("/calculations/{task_id}/wait", response_model=TaskResponse, responses=NOT_FOUND)
async def wait_for_calculation(
    task_id: str, timeout: Annotated[float, Query(ge=0, le=60, allow_inf_nan=False)] = 10.0
) -> TaskResponse:
    """Wait up to `timeout` seconds (at most 60) for a calculation to finish (a long poll)."""
    task = await run_in_threadpool(manager.get, task_id)
    if task is None:
        raise HTTPException(404, f"no task {task_id}")
    try:
        await task.resolve(timeout=timeout)  # sleeps until the file changes
    except Exception:  # castor.JoinTimeout (still running), or the task's own failure
        pass  # either way _response says which
    return await run_in_threadpool(_response, task)
