"""The dashboard's tests: a real `castord web` (and castord) in subprocesses, driven by
Debian's chromium through Playwright (the system browser: nothing is downloaded).

Fixtures:
* `webapp`: `webapp.py` in the test's directory, a Manager on the test's database
  with the tasks these tests enqueue (importable from the test too).
* `web_servers`: starts `castord web webapp:manager --port 0 ...`, returns its URL
  once its log names it, and stops it by pid (SIGTERM, then SIGKILL) at teardown.
* `browser` (one per session) and `browse`: a fresh context per test that records
  every request the page makes, every dialog (alert) and every console error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, wait_until
from tests.process.test_castord import CASTORD, daemons  # noqa: F401 - fixture
from tests.tools import require_tool

WEBAPP = '''
import os
import castor

manager = castor.Manager(os.environ["CASTOR_TEST_DB"])

@manager.task(mode="process", name="echo")
def echo(value):
    return value

@manager.task(mode="process", name="boom")
def boom(message):
    raise ValueError(message)

@manager.task(mode="process", name="flaky_until")
def flaky_until(marker):
    """Fails until the file `marker` exists (the test creates it before clicking Retry)."""
    if not os.path.exists(marker):
        raise ValueError(f"no marker yet: {marker}")
    return "fixed"

@manager.periodic(every=3600, mode="thread", name="hourly_report")
def hourly_report():
    return "report"
'''

# What a headless chromium needs on these machines (no GPU, no network but loopback).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture
def webapp(app_dir: Path) -> Iterator[Any]:
    (app_dir / "webapp.py").write_text(textwrap.dedent(WEBAPP))
    sys.modules.pop("webapp", None)
    import webapp as module

    yield module
    sys.modules.pop("webapp", None)
    module.manager.close()


class WebServer:
    """One `castord web` started by a test, stopped by its pid."""

    def __init__(self, app_dir: Path, name: str):
        self.app_dir = app_dir
        self.log_file = app_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, *options: str, app: str = "webapp:manager", timeout: float = 30) -> WebServer:
        args = [CASTORD, "web", app, "--port", "0", "--log-format", "json", *options]
        env = {**os.environ, "PYTHONPATH": f"{self.app_dir}{os.pathsep}{REPO}"}
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(args, cwd=self.app_dir, env=env, start_new_session=True,
                                         stdout=log, stderr=subprocess.STDOUT)
        listening = wait_until(lambda: self._event("web.listening") or self._exited(), timeout,
                               "castord web to log web.listening")
        assert isinstance(listening, dict), f"castord web exited early: {self.log_file.read_text()}"
        self.url = listening["url"]
        return self

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        lines = self.log_file.read_text().splitlines() if self.log_file.exists() else []
        parsed = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in parsed if name is None or e.get("event") == name]

    def _event(self, name: str) -> dict[str, Any] | None:
        found = self.events(name)
        return found[0] if found else None

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


@pytest.fixture
def web_servers(app_dir: Path, webapp: Any) -> Iterator[Callable[..., WebServer]]:
    started: list[WebServer] = []

    def start(*options: str, name: str = "web") -> WebServer:
        server = WebServer(app_dir, name)
        started.append(server)
        return server.start(*options)

    yield start
    for server in started:
        server.stop()


# Per module, not per session: Playwright's sync API keeps an asyncio loop running in
# the main thread until it stops, and any later test of the same process that calls
# asyncio.run() would fail ("cannot be called from a running event loop").
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_tool("chromium", "apt-get install chromium (.ci/apt-packages lists it)")
    from playwright.sync_api import sync_playwright

    # Playwright gives each launch a fresh, temporary --user-data-dir of its own.
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


@dataclass
class Browse:
    """A page in a fresh browser context, and what it did."""

    page: Any
    context: Any
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def outside(self, base: str) -> list[str]:
        """Requests to anywhere but the dashboard at `base`."""
        return [url for url in self.requests if not (url == base or url.startswith(base + "/"))]


@pytest.fixture
def browse(browser: Any) -> Iterator[Callable[..., Browse]]:
    contexts: list[Any] = []

    def open_page(**context_options: Any) -> Browse:
        context = browser.new_context(viewport={"width": 1280, "height": 900}, **context_options)
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        seen = Browse(page, context)
        context.on("request", lambda request: seen.requests.append(request.url))

        def on_dialog(dialog: Any) -> None:
            seen.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("console", lambda m: seen.console_errors.append(m.text) if m.type == "error" else None)
        return seen

    yield open_page
    for context in contexts:
        context.close()
