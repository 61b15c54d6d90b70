"""The web application: the seed's two endpoints, plus castor's whole task API.

    uvicorn examples.fastapi_app.main:app

POST /calculate enqueues complex_calculation and answers at once (202);
GET /calculations/{id} shows how it is going, and GET /calculations/{id}/wait
waits for it without blocking the event loop. castor.web.router(manager) adds
/tasks: submit any task by name, get, cancel, list, task types and health.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

import castor
import castor.web
from examples.fastapi_app.tasks import complex_calculation, db, manager


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    manager.close()  # castor's connections; the BeaverDB is the app's to close
    db.close()


app = FastAPI(title="castor FastAPI example", lifespan=lifespan)
app.include_router(castor.web.router(manager))


class Calculation(BaseModel):
    a: int = 100
    b: int = 250


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


@app.get("/calculations/{task_id}", response_model=TaskResponse)
def get_calculation(task_id: str) -> TaskResponse:
    """How a calculation is going: its status, then its result or error."""
    task = manager.get(task_id)
    if task is None:
        raise HTTPException(404, f"no task {task_id}")
    return _response(task)


@app.get("/calculations/{task_id}/wait", response_model=TaskResponse)
async def wait_for_calculation(task_id: str, timeout: float = 10.0) -> TaskResponse:
    """Wait up to `timeout` seconds for a calculation to finish (a long poll)."""
    task = await run_in_threadpool(manager.get, task_id)
    if task is None:
        raise HTTPException(404, f"no task {task_id}")
    try:
        await task.resolve(timeout=timeout)  # sleeps until the file changes
    except Exception:  # castor.JoinTimeout (still running), or the task's own failure
        pass  # either way _response says which
    return await run_in_threadpool(_response, task)
