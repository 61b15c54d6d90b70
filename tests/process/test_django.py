"""castor as the backend of Django's task framework, in a real Django project.

The project is made in tmp_path (settings, an app with a model and tasks.py,
its migrations run); tasks are enqueued through django.tasks in one process, a
real `castord start castor.integrations.django:manager` runs them, and another
process reads the results back through Django's API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import django.tasks  # noqa: F401 - Django 6.0+, from the dev extra: missing, the tests fail, never skip
import pytest

import castor
from tests.conftest import REPO
from tests.process.test_castord import Castord

SETTINGS = '''
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "not a secret: a test project"
USE_TZ = True
INSTALLED_APPS = ["shop"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
TASKS = {
    "default": {
        "BACKEND": "castor.integrations.django.CastorBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"DATABASE": BASE_DIR / "tasks.db"},
    },
    "cpu": {  # the same file: one castord runs both, these in its process children
        "BACKEND": "castor.integrations.django.CastorBackend",
        "OPTIONS": {"DATABASE": BASE_DIR / "tasks.db", "MODE": "process"},
    },
}
'''

MODELS = '''
from django.db import models


class Order(models.Model):
    paid = models.BooleanField(default=False)
'''

TASKS = '''
import os

from django.tasks import task

from shop.models import Order


@task
def add(a, b):
    return a + b


@task(queue_name="emails", priority=10)
def send_email(to):
    return {"sent": to, "pid": os.getpid()}


@task(backend="cpu")
def crunch(n):
    return {"sum": sum(range(n)), "pid": os.getpid()}


@task
def fail(message):
    raise ValueError(message)


@task(takes_context=True)
def whoami(context, tag):
    return {"id": context.task_result.id, "attempt": context.attempt, "tag": tag,
            "status": context.task_result.status}


@task
async def async_add(a, b):
    return a + b


@task
def flaky(marker, fails):
    with open(marker, "a") as f:
        f.write("x")
    attempt = len(open(marker).read())
    if attempt <= fails:
        raise ConnectionError(f"attempt {attempt}")
    return f"ok after {attempt}"


@task
def mark_paid(order_id):
    order = Order.objects.get(pk=order_id)
    order.paid = True
    order.save()
    return order.pk
'''

# Run as `python client.py COMMAND` in the project: Django set up, JSON on stdout.
CLIENT = '''
import json
import sys
import time
from datetime import timedelta

import django

django.setup()

from django.tasks import default_task_backend
from django.tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch
from django.utils import timezone

from shop import tasks
from shop.models import Order


def view(result):
    out = {"id": result.id, "status": result.status, "queue": result.task.queue_name,
           "priority": result.task.priority, "args": result.args, "kwargs": result.kwargs,
           "backend": result.backend, "attempts": result.attempts, "worker_ids": result.worker_ids,
           "errors": [{"type": e.exception_class_path, "traceback": e.traceback} for e in result.errors],
           "enqueued_at": result.enqueued_at.isoformat() if result.enqueued_at else None,
           "started_at": result.started_at.isoformat() if result.started_at else None,
           "finished_at": result.finished_at.isoformat() if result.finished_at else None,
           "run_after": result.task.run_after.isoformat() if result.task.run_after else None}
    try:
        out["return_value"] = result.return_value
    except ValueError as exc:
        out["return_value_error"] = str(exc)
    return out


def enqueue():
    order = Order.objects.create()
    results = {
        "add": tasks.add.enqueue(2, 3),
        "send_email": tasks.send_email.enqueue("ada@example.com"),
        "fail": tasks.fail.enqueue("boom"),
        "whoami": tasks.whoami.enqueue(tag="t"),
        "async_add": tasks.async_add.enqueue(1, 2),
        "mark_paid": tasks.mark_paid.enqueue(order.pk),
        "later": tasks.add.using(run_after=timezone.now() + timedelta(seconds=2)).enqueue(10, 20),
        "urgent": tasks.add.using(priority=-5, queue_name="emails").enqueue(0, 0),
        "crunch": tasks.crunch.enqueue(1000),
    }
    print(json.dumps({"order": order.pk, **{k: view(r) for k, r in results.items()}}))


def wait(ids):
    """Refresh each result until it finishes (the test's own deadline kills us otherwise)."""
    results = {name: default_task_backend.get_result(i) for name, i in ids.items()}
    while not all(r.is_finished for r in results.values()):
        time.sleep(0.05)
        for r in results.values():
            r.refresh()
    print(json.dumps({name: view(r) for name, r in results.items()}))


def lookups(ids):
    out = {}
    try:
        default_task_backend.get_result("no-such-id")
    except TaskResultDoesNotExist as exc:
        out["unknown"] = f"{type(exc).__name__}: {exc}"
    try:
        tasks.add.get_result(ids["fail"])
    except TaskResultMismatch as exc:
        out["mismatch"] = str(exc)
    out["same_task"] = tasks.fail.get_result(ids["fail"]).status
    out["paid"] = Order.objects.get(pk=ids["order"]).paid
    print(json.dumps(out))


command = sys.argv[1]
if command == "enqueue":
    enqueue()
elif command == "wait":
    wait(json.loads(sys.argv[2]))
else:
    lookups(json.loads(sys.argv[2]))
'''


def django_env(project: Path, settings: str = "mysite.settings") -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{project}{os.pathsep}{REPO}", "DJANGO_SETTINGS_MODULE": settings}


def run(project: Path, *args: str, settings: str = "mysite.settings", check: bool = True,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, *args], cwd=project, env=django_env(project, settings),
                            capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write(root / "mysite" / "__init__.py", "")
    write(root / "mysite" / "settings.py", SETTINGS)
    write(root / "shop" / "__init__.py", "")
    write(root / "shop" / "models.py", MODELS)
    write(root / "shop" / "tasks.py", TASKS)
    write(root / "client.py", CLIENT)
    write(root / "manage.py", """
        import sys
        from django.core.management import execute_from_command_line
        execute_from_command_line(sys.argv)
    """)
    return root


@pytest.fixture
def migrated(project: Path) -> Path:
    run(project, "manage.py", "makemigrations", "shop")
    run(project, "manage.py", "migrate")
    return project


@pytest.fixture
def castord(migrated: Path):
    daemon = Castord(migrated)
    yield daemon
    daemon.stop()


def start(daemon: Castord, settings: str) -> None:
    daemon.start("--workers", "1", "--threads", "2", app="castor.integrations.django:manager",
                 env={"DJANGO_SETTINGS_MODULE": settings})
    daemon.wait_note("READY=1", timeout=60)


@pytest.mark.timeout(180)
def test_django_tasks_enqueue_into_castor_and_castord_runs_them(migrated: Path, castord: Castord) -> None:
    settings = "mysite.settings"
    enqueued = json.loads(run(migrated, "client.py", "enqueue").stdout)
    order = enqueued.pop("order")
    assert {r["status"] for r in enqueued.values()} == {"READY"}
    assert enqueued["send_email"]["queue"] == "emails" and enqueued["send_email"]["priority"] == 10
    assert enqueued["urgent"]["queue"] == "emails" and enqueued["urgent"]["priority"] == -5
    assert enqueued["later"]["run_after"] is not None and enqueued["add"]["run_after"] is None
    assert enqueued["add"]["return_value_error"] == "Task has not finished yet"
    assert enqueued["add"]["attempts"] == 0 and enqueued["add"]["backend"] == "default"

    # Stored as castor tasks, with castor's queues and priorities.
    manager = castor.Manager(str(migrated / "tasks.db"))
    try:
        stored = {t.id: t.info() for t in manager.tasks(limit=None)}
    finally:
        manager.close()
    assert {(r.name, r.mode) for r in stored.values()} == {("django:default", "thread"), ("django:cpu", "process")}
    assert stored[enqueued["crunch"]["id"]].name == "django:cpu" and enqueued["crunch"]["backend"] == "cpu"
    email = stored[enqueued["send_email"]["id"]]
    assert (email.queue, email.priority) == ("emails", 10)
    assert json.loads(email.args) == ["shop.tasks.send_email", ["ada@example.com"], {}]
    later = stored[enqueued["later"]["id"]]
    assert later.eta > later.enqueued_at + 1

    start(castord, settings)
    ids = {name: r["id"] for name, r in enqueued.items()}
    results = json.loads(run(migrated, "client.py", "wait", json.dumps(ids), settings=settings, timeout=90).stdout)

    assert results["add"]["status"] == "SUCCESSFUL" and results["add"]["return_value"] == 5
    assert results["async_add"]["return_value"] == 3
    assert results["urgent"]["return_value"] == 0
    sent = results["send_email"]["return_value"]
    assert sent["sent"] == "ada@example.com" and sent["pid"] != castord.pid  # ran in a child
    assert results["crunch"]["return_value"]["sum"] == 499500 and results["crunch"]["backend"] == "cpu"
    assert results["crunch"]["return_value"]["pid"] not in (castord.pid, sent["pid"])  # a process child
    assert results["whoami"]["return_value"] == {"id": ids["whoami"], "attempt": 1, "tag": "t",
                                                 "status": "RUNNING"}
    assert results["mark_paid"]["return_value"] == order
    assert results["add"]["attempts"] == 1 and results["add"]["worker_ids"][0]  # castor's worker
    assert results["add"]["started_at"] <= results["add"]["finished_at"]
    assert results["later"]["started_at"] >= enqueued["later"]["run_after"]  # not before run_after

    failed = results["fail"]
    assert failed["status"] == "FAILED" and failed["return_value_error"] == "Task failed"
    [error] = failed["errors"]
    assert error["type"] == "builtins.ValueError"
    assert "ValueError: boom" in error["traceback"] and 'raise ValueError(message)' in error["traceback"]

    found = json.loads(run(migrated, "client.py", "lookups", json.dumps({**ids, "order": order}),
                           settings=settings).stdout)
    assert found["unknown"] == "TaskResultDoesNotExist: no-such-id"
    assert found["mismatch"] == "Task does not match (received 'shop.tasks.fail')"
    assert found["same_task"] == "FAILED"
    assert found["paid"] is True  # the task wrote through Django's ORM in castord's child


# -- retries, cancellation, and castor.testing with Django -------------------------------------

RETRY_SETTINGS = """
from mysite.settings import *

TASKS["default"]["OPTIONS"]["TASK_OPTIONS"] = {"retries": 2, "retry_delay": 0}
"""

# Enqueue through Django, run in this process with castor.testing.drain, read back.
DRAIN_CLIENT = """
import json
import sys

import django

django.setup()

import castor
from castor.integrations.django import get_manager
from castor.testing import drain
from client_views import view
from shop import tasks

marker = sys.argv[1]
recovers = tasks.flaky.enqueue(marker + ".a", 2)
gives_up = tasks.flaky.enqueue(marker + ".b", 5)
cancelled = tasks.add.enqueue(1, 1)
manager = get_manager()
manager.cancel(cancelled.id)
drain(manager)
for result in (recovers, gives_up, cancelled):
    result.refresh()
print(json.dumps({"recovers": view(recovers), "gives_up": view(gives_up), "cancelled": view(cancelled)}))
"""


@pytest.mark.timeout(120)
def test_castor_retries_show_as_attempts_and_errors(project: Path, tmp_path: Path) -> None:
    write(project / "mysite" / "settings_retry.py", RETRY_SETTINGS)
    write(project / "client_views.py", CLIENT.split("def enqueue")[0].replace("django.setup()", ""))
    write(project / "drain_client.py", DRAIN_CLIENT)
    out = json.loads(run(project, "drain_client.py", str(tmp_path / "marker"),
                         settings="mysite.settings_retry").stdout)

    recovers = out["recovers"]
    assert recovers["status"] == "SUCCESSFUL" and recovers["return_value"] == "ok after 3"
    assert recovers["attempts"] == 3
    assert recovers["worker_ids"][:2] == ["", ""] and recovers["worker_ids"][2]  # castor keeps the latest
    assert [(e["type"], e["traceback"]) for e in recovers["errors"]] == [
        ("builtins.ConnectionError", "builtins.ConnectionError: attempt 1\n"),
        ("builtins.ConnectionError", "builtins.ConnectionError: attempt 2\n")]

    gives_up = out["gives_up"]
    assert gives_up["status"] == "FAILED" and gives_up["attempts"] == 3
    assert [e["type"] for e in gives_up["errors"]] == ["builtins.ConnectionError"] * 3
    assert gives_up["errors"][-1]["traceback"].startswith("Traceback (most recent call last):")  # the full one
    assert "ConnectionError: attempt 3" in gives_up["errors"][-1]["traceback"]

    cancelled = out["cancelled"]
    assert cancelled["status"] == "FAILED" and cancelled["attempts"] == 0
    assert [e["type"] for e in cancelled["errors"]] == ["castor.errors.TaskCancelled"]


# -- bad input -----------------------------------------------------------------------------------

IMPORT_TASKS = ["-c", "import django; django.setup(); import shop.tasks"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend, message", [
    ({"OPTIONS": {}}, "TASKS['default']['OPTIONS']['DATABASE'] must be the path of castor's database file, "
                      "e.g. BASE_DIR / 'tasks.db', not None"),
    ({"OPTIONS": "tasks.db"}, "TASKS['default']['OPTIONS'] must be a dict, not str"),
    ({"OPTIONS": {"DATABSE": "x.db"}},
     "TASKS['default']['OPTIONS']: unknown option 'DATABSE'; the options are DATABASE, MODE, TASK_OPTIONS"),
    ({"OPTIONS": {"DATABASE": "/t.db", "MODE": "fork"}},
     "TASKS['default']['OPTIONS']['MODE'] must be 'thread' (castord's thread host runs the tasks) or "
     "'process' (its process children do), not 'fork'"),
    ({"OPTIONS": {"DATABASE": "/t.db", "TASK_OPTIONS": {"retries": -1}}},
     "TASKS['default']['OPTIONS']['TASK_OPTIONS']: retries must be an integer ≥ 0, not -1"),
    ({"OPTIONS": {"DATABASE": "/t.db", "TASK_OPTIONS": {"queue": "x"}}},
     "TASKS['default']['OPTIONS']['TASK_OPTIONS']: 'queue' is not one castor takes here"),
    ({"QUEUES": "default", "OPTIONS": {"DATABASE": "/t.db"}},
     "TASKS['default']['QUEUES'] must be a list of queue names, not 'default'"),
    ({"QUEUES": ["default", ""], "OPTIONS": {"DATABASE": "/t.db"}},
     "TASKS['default']['QUEUES'] holds ''; a queue name is a non-empty string"),
])
def test_bad_options_fail_the_first_task_with_one_clear_message(project: Path, backend, message) -> None:
    backend = {"BACKEND": "castor.integrations.django.CastorBackend", **backend}
    write(project / "mysite" / "bad.py", f"from mysite.settings import *\nTASKS = {{'default': {backend!r}}}\n")
    result = run(project, *IMPORT_TASKS, settings="mysite.bad", check=False)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"django.tasks.exceptions.InvalidTaskBackend: {message}"), result.stderr


CHECK = ["-c", "import django; django.setup(); import shop.tasks; "
               "from django.core.management import call_command; call_command('check')"]


@pytest.mark.timeout(120)
def test_check_warns_of_a_relative_database_path(project: Path) -> None:
    write(project / "mysite" / "relative.py", "from mysite.settings import *\n"
                                               "TASKS['default']['OPTIONS']['DATABASE'] = 'tasks.db'\n")
    result = run(project, *CHECK, settings="mysite.relative")
    assert "(castor.W001) TASKS['default']: castor's DATABASE is a relative path; it resolves to " \
           f"{project / 'tasks.db'} here, and to another file in a castord started from another directory" \
           in result.stderr, result.stderr
    assert "HINT: Use an absolute path, e.g. BASE_DIR / 'tasks.db'." in result.stderr


@pytest.mark.timeout(120)
def test_check_reports_a_database_castor_cannot_open(project: Path) -> None:
    write(project / "mysite" / "missing.py", "from mysite.settings import *\n"
                                              "TASKS['default']['OPTIONS']['DATABASE'] = BASE_DIR / 'gone' / 't.db'\n")
    result = run(project, *CHECK, settings="mysite.missing", check=False)
    assert result.returncode == 1
    assert f"(castor.E001) TASKS['default']: castor cannot use its DATABASE: cannot open {project}/gone/t.db: " \
           f"directory {project}/gone does not exist" in result.stderr, result.stderr


@pytest.mark.timeout(120)
def test_enqueue_refuses_what_json_cannot_carry_and_stores_nothing(project: Path) -> None:
    script = ("import django; django.setup(); from shop import tasks\n"
              "try:\n    tasks.add.enqueue(1, object())\n"
              "except TypeError as exc:\n    print(exc)\n"
              "try:\n    tasks.add.using(queue_name='nope').enqueue(1, 2)\n"
              "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
              "from castor.integrations.django import get_manager\nprint(get_manager().count())\n")
    lines = run(project, "-c", script).stdout.splitlines()
    assert lines[0] == ("cannot enqueue shop.tasks.add: argument 1 (object) is not json-serializable (Object of "
                        "type object is not JSON serializable). Django task arguments must be JSON values: "
                        "str, int, float, bool, None, and lists and dicts of them.")
    assert lines[1] == "InvalidTask Queue 'nope' is not valid for backend."
    assert lines[2] == "0"


@pytest.mark.timeout(120)
def test_get_result_does_not_answer_for_the_apps_own_castor_tasks(project: Path) -> None:
    script = ("import django; django.setup(); import shop.tasks\n"
              "from django.tasks import default_task_backend\n"
              "from django.tasks.exceptions import TaskResultDoesNotExist\n"
              "from castor.integrations.django import get_manager\n"
              "manager = get_manager()\n"
              "@manager.task(mode='thread', name='native')\ndef native():\n    return 1\n"
              "task = native.delay()\n"
              "try:\n    default_task_backend.get_result(task.id)\n"
              "except TaskResultDoesNotExist as exc:\n    print('does not exist', exc.args == (task.id,))\n")
    assert run(project, "-c", script).stdout.strip() == "does not exist True"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("env, settings, message", [
    ({}, None, "castor.integrations.django could not set Django up (ImproperlyConfigured: Requested setting "),
    ({}, "mysite.nope", "could not set Django up (ModuleNotFoundError: No module named 'mysite.nope'); set "
                        "DJANGO_SETTINGS_MODULE to your settings module"),
    ({}, "mysite.other", "TASKS['default'] uses django.tasks.backends.immediate.ImmediateBackend, not "
                         "castor.integrations.django.CastorBackend: castord has nothing of it to run"),
])
def test_castord_says_why_it_cannot_load_the_django_app(project: Path, env, settings, message) -> None:
    write(project / "mysite" / "other.py", "from mysite.settings import *\n"
          "TASKS = {'default': {'BACKEND': 'django.tasks.backends.immediate.ImmediateBackend'}}\n")
    full_env = django_env(project, settings or "")
    if settings is None:
        del full_env["DJANGO_SETTINGS_MODULE"]
    result = subprocess.run([str(Path(sys.executable).parent / "castord"), "start",
                             "castor.integrations.django:manager", "--workers", "1", "--threads", "1"],
                            cwd=project, env=full_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    assert message in result.stdout + result.stderr
