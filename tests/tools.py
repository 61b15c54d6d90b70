"""External tools the tests need (promtool, jq, gunicorn, a browser, systemd-nspawn...).

Outside CI a test whose tool is missing skips with the reason; in CI (`CI` set, as
`.ci/run` runs) a missing tool fails the test instead: `.ci/run` must install it.
"""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> None:
    """Skip (outside CI) or fail (in CI) for something the machine lacks."""
    if in_ci():
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


def require_tool(name: str, hint: str = "") -> str:
    """The path of command `name`, or skip/fail as above."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed{': ' + hint if hint else ''}")
    assert path is not None
    return path
