"""manager.on(): the names and functions it refuses, with a message that says what fits."""

from __future__ import annotations

from pathlib import Path

import pytest

import castor
from castor.errors import ConfigurationError
from castor.hooks import EVENTS


@pytest.fixture
def manager(tmp_path: Path):
    m = castor.Manager(str(tmp_path / "app.db"))
    yield m
    m.close()


def test_an_unknown_event_is_refused_listing_the_events(manager: castor.Manager) -> None:
    with pytest.raises(ConfigurationError) as caught:
        manager.on("task.finished", print)
    message = str(caught.value)
    assert "'task.finished'" in message and all(event in message for event in EVENTS)


def test_the_decorator_checks_the_event_at_once(manager: castor.Manager) -> None:
    with pytest.raises(ConfigurationError, match="unknown event 'task.done'"):
        manager.on("task.done")


def test_a_hook_must_be_callable(manager: castor.Manager) -> None:
    with pytest.raises(ConfigurationError, match="fn must be callable, not str"):
        manager.on("task.failed", "notify_ops")
    assert manager.hooks.listeners == {}


def test_off_checks_the_event_too(manager: castor.Manager) -> None:
    with pytest.raises(ConfigurationError, match="Manager.off: unknown event"):
        manager.off("task.nope", print)


def test_no_hooks_means_no_listeners(manager: castor.Manager) -> None:
    """The hot paths test `hooks.listeners` for truth: it stays empty until on()."""
    assert not manager.hooks.listeners
    hook = manager.on("task.started", print)
    assert manager.hooks.listeners == {"task.started": [print]}
    manager.off("task.started", hook)
    assert not manager.hooks.listeners
