"""Loading APP strings: every way it can go wrong says so clearly."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from castor.app import AppLoadError, load_manager
from tests.conftest import REPO


@pytest.fixture
def pkg(tmp_path, db_path, monkeypatch):
    (tmp_path / "goodapp.py").write_text(textwrap.dedent(f'''
        import castor
        manager = castor.Manager({db_path!r}, include=["goodtasks"])
        not_a_manager = 42
    '''))
    (tmp_path / "goodtasks.py").write_text(textwrap.dedent('''
        from goodapp import manager

        @manager.task(mode="thread", name="hello")
        def hello():
            return "hi"
    '''))
    (tmp_path / "brokenapp.py").write_text("import castor\nraise RuntimeError('boom at import')\n")
    (tmp_path / "importsmissing.py").write_text("import does_not_exist_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("goodapp", "goodtasks", "brokenapp", "importsmissing"):
        module = sys.modules.pop(name, None)
        if name == "goodapp" and module is not None:
            module.manager.close()


def test_loads_the_manager_and_its_include_modules(pkg):
    manager = load_manager("goodapp:manager")
    assert "hello" in manager.registry


@pytest.mark.parametrize("app,message", [
    ("goodapp", "must look like 'module.path:variable'"),
    (":manager", "must look like"),
    ("nosuchmodule:manager", "no module named 'nosuchmodule'"),
    ("importsmissing:manager", "raised|failed"),
    ("brokenapp:manager", "raised RuntimeError: boom at import"),
    ("goodapp:missing", "has no attribute 'missing'"),
    ("goodapp:not_a_manager", "is a int, not a castor.Manager"),
])
def test_bad_app_strings(pkg, app, message):
    with pytest.raises(AppLoadError, match=message):
        load_manager(app)


def test_worker_command_exits_3_on_a_bad_app(pkg):
    result = subprocess.run(
        [sys.executable, "-m", "castor", "nosuchmodule:manager"], cwd=pkg, capture_output=True,
        text=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 3
    assert "error: cannot import 'nosuchmodule'" in result.stderr
