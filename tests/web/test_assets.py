"""The dashboard's vendored and packaged files: what VENDORED.md says is what ships."""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import re
import sys
import tomllib

import pytest

from tests.conftest import REPO

WEBUI = REPO / "castor" / "webui"


def test_the_vendored_htmx_is_the_one_recorded_with_its_licence():
    record = (WEBUI / "static" / "VENDORED.md").read_text()
    name, version = re.search(r"`(htmx-(\d+\.\d+\.\d+)\.min\.js)`", record).groups()  # type: ignore[union-attr]
    digest = hashlib.sha256((WEBUI / "static" / name).read_bytes()).hexdigest()
    assert f"sha256 of `{name}`: `{digest}`" in record
    assert f"| {version} |" in record and "Zero-Clause BSD" in (WEBUI / "static" / "htmx-LICENSE.txt").read_text()
    assert f'/static/{name}"' in (WEBUI / "templates" / "base.html").read_text()
    scripts = [p.name for p in (WEBUI / "static").glob("*.js")]
    assert scripts == [name]  # one script, and it is the recorded one


def test_every_template_and_asset_is_package_data():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["castor"]
    files = [p.relative_to(REPO / "castor").as_posix() for folder in ("templates", "static")
             for p in (WEBUI / folder).iterdir()]
    assert files and all(any(fnmatch.fnmatch(f, pattern) for pattern in patterns) for f in files), files


def test_no_template_reaches_outside_the_server():
    for template in (WEBUI / "templates").glob("*.html"):
        text = re.sub(r"\{#.*?#\}", "", template.read_text(), flags=re.S)  # Jinja comments aside
        assert not re.search(r"(src|href|action)=\"(https?:)?//", text), template.name
        # The CSP allows dashboard.css and the htmx file only: no inline style or script.
        assert not re.search(r"\sstyle=|<style[\s>]|<script>|\son[a-z]+=", text), template.name


@pytest.mark.parametrize("missing", ["jinja2", "starlette"])
def test_without_its_extra_the_import_names_it(monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # as if it were not installed
    for name in [m for m in sys.modules if m == "castor.webui" or m.startswith("castor.webui.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ModuleNotFoundError, match=r"castor.webui needs Starlette and Jinja2 .*pip install 'castor\[web\]'"):
        importlib.import_module("castor.webui")
