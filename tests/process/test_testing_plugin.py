"""castor's pytest plugin as a user meets it: a project of their own, run by pytest in
a subprocess, with the fixtures coming from the installed entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import castor

APP = '''
import castor

manager = castor.Manager("app.db")      # the application's own file

@manager.task(mode="thread")
def send_welcome(address):
    return f"welcome, {address}"

def signup(address):
    send_welcome.delay(address)
'''

TESTS = '''
from castor.testing import assert_enqueued, drain

import app

def test_fresh_manager(castor_manager):
    @castor_manager.task(mode="process")
    def double(n):
        return 2 * n

    task = double.delay(21)
    assert drain(castor_manager) == [task] and task.result == 42

def test_the_apps_manager_isolated(castor_isolate, tmp_path):
    manager = castor_isolate(app.manager)
    assert manager.path.startswith(str(tmp_path))
    app.signup("ada@example.com")
    [sent] = assert_enqueued(manager, app.send_welcome, ("ada@example.com",))
    drain(manager)
    assert sent.task.result == "welcome, ada@example.com"
'''


def run_pytest(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=project,
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "app.py").write_text(textwrap.dedent(APP))
    (root / "test_app.py").write_text(textwrap.dedent(TESTS))
    return root


@pytest.mark.timeout(120)
def test_the_fixtures_come_with_the_install(project: Path) -> None:
    result = run_pytest(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    apps_own = castor.Manager(str(project / "app.db"))  # created by app.py's import...
    try:
        assert apps_own.count() == 0  # ...but the isolated test enqueued elsewhere
    finally:
        apps_own.close()


@pytest.mark.timeout(120)
def test_no_castor_turns_the_plugin_off(project: Path) -> None:
    result = run_pytest(project, "-p", "no:castor")
    assert result.returncode == 1
    assert "fixture 'castor_manager' not found" in result.stdout


@pytest.mark.timeout(120)
def test_pytest_plugins_loads_it_when_autoload_is_off(project: Path) -> None:
    (project / "conftest.py").write_text('pytest_plugins = ["castor.testing.plugin"]\n')
    result = run_pytest(project, env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.timeout(120)
def test_overriding_castor_manager_hands_the_apps_manager_to_every_test(project: Path) -> None:
    (project / "conftest.py").write_text(textwrap.dedent('''
        import pytest
        import app

        @pytest.fixture
        def castor_manager(castor_isolate):
            return castor_isolate(app.manager)
    '''))
    (project / "test_app.py").write_text(textwrap.dedent('''
        from castor.testing import assert_enqueued
        import app

        def test_signup(castor_manager):
            assert castor_manager is app.manager
            app.signup("ada@example.com")
            assert_enqueued(castor_manager, app.send_welcome, ("ada@example.com",))

        def test_a_wrong_expectation_shows_what_was_enqueued(castor_manager):
            app.signup("bob@example.com")
            assert_enqueued(castor_manager, app.send_welcome, ("eve@example.com",))
    '''))
    result = run_pytest(project)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout
    # Each test has a file of its own: the second sees bob only, not ada too.
    assert "expected app.send_welcome('eve@example.com') enqueued at least once, found 0" in result.stdout
    assert "app.send_welcome('bob@example.com') [pending" in result.stdout
    assert "ada@example.com') [pending" not in result.stdout
