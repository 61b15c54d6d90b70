"""castor's pytest fixtures, loaded by pytest on its own once castor is installed
(the `pytest11` entry point in pyproject.toml; `-p no:castor` turns it off).

* `castor_manager`: a fresh Manager on a database file in the test's tmp_path,
  closed after the test. Override it in your conftest.py to hand your
  application's own Manager to the tests (see docs/testing-your-app.md).
* `castor_isolate`: `castor_isolate(app.manager)` points your application's
  Manager at a file in tmp_path until the test ends.

The plugin only defines fixtures: no hooks, no options, nothing that runs
unless a test asks for one of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from castor.manager import Manager
from castor.testing import isolated


@pytest.fixture
def castor_manager(tmp_path: Path) -> Iterator[Manager]:
    """A Manager on `tmp_path / "castor.db"`; define tasks on it, enqueue, drain()."""
    manager = Manager(str(tmp_path / "castor.db"))
    try:
        yield manager
    finally:
        manager.close()


@pytest.fixture
def castor_isolate(tmp_path: Path) -> Iterator[Callable[[Manager], Manager]]:
    """`castor_isolate(manager)`: that Manager uses a fresh file in tmp_path for this test."""
    numbers = itertools.count()
    with ExitStack() as stack:
        yield lambda manager: stack.enter_context(isolated(manager, tmp_path / f"castor-{next(numbers)}.db"))
