"""deploy/prometheus: the alert rules castor ships, checked and unit-tested by a real promtool.

tests/process/test_metrics.py checks the other side: that a real castord exports
every series these rules read, from its first scrape.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.tools import require_tool

pytestmark = pytest.mark.timeout(120)

DEPLOY = REPO / "deploy" / "prometheus"
RULES = DEPLOY / "castor-rules.yml"
RULE_TESTS = DEPLOY / "castor-rules.test.yml"

# The expression the issue found: nothing when castord is dead, an alert during a long drain.
OLD_DOWN_EXPR = "castor_daemon_up == 0 or castor_database_up == 0"


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    path = require_tool("promtool", "Debian package prometheus (listed in .ci/apt-packages)")
    return subprocess.run([path, *map(str, args)], capture_output=True, text=True, timeout=60)


def alerts(text: str) -> list[tuple[str, str]]:
    """(name, expr) of each rule, in order; each rule's expr is on one line."""
    found = re.findall(r"- alert: (\w+)\n(?:\s+#.*\n)*\s+expr: (.+)\n", text)
    assert len(found) == text.count("- alert:"), "every alert needs its expr on the line after it"
    return found


def with_expr(tmp_path: Path, name: str, expr: str) -> Path:
    """A copy of the rules and their tests in tmp_path, with alert `name`'s expr replaced."""
    text = RULES.read_text()
    old = dict(alerts(text))[name]
    (tmp_path / RULES.name).write_text(text.replace(f"expr: {old}\n", f"expr: {expr}\n", 1))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    return tmp_path / RULE_TESTS.name


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts(RULES.read_text()))} rules found" in result.stdout


def test_the_rules_pass_their_unit_tests():
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("name", [n for n, _ in alerts(RULES.read_text())])
def test_each_alert_has_a_test_that_needs_it_to_fire(name, tmp_path):
    """With the alert's expression made to match nothing, its tests fail: some test
    expects it to fire (and promtool checks its labels and annotations)."""
    result = promtool("test", "rules", with_expr(tmp_path, name, "vector(0) > 1"))
    assert result.returncode != 0, f"no test of castor-rules.test.yml expects {name} to fire"
    assert f"alertname: {name}," in result.stderr


def test_each_alert_has_a_test_where_it_stays_quiet():
    cases = re.findall(r"alertname: (\w+)\n\s+exp_alerts:(.*)\n", RULE_TESTS.read_text())
    assert len(cases) == RULE_TESTS.read_text().count("alertname:"), "each alertname is followed by exp_alerts"
    quiet = {name for name, rest in cases if rest.strip() == "[]"}
    firing = {name for name, rest in cases if rest.strip() == ""}
    names = {n for n, _ in alerts(RULES.read_text())}
    assert names - quiet == set(), "alerts with no case where they must not fire"
    assert names - firing == set(), "alerts with no case where they must fire"


def test_the_issues_down_rule_fails_the_down_tests(tmp_path):
    """Issue 13 item 8 (promtool prints failures on stderr): `castor_daemon_up == 0 or castor_database_up == 0` never fired on
    a dead castord (which exports nothing); the tests of CastordDown catch that rule."""
    result = promtool("test", "rules", with_expr(tmp_path, "CastordDown", OLD_DOWN_EXPR))
    assert result.returncode != 0
    assert "name: a dead castord is down, not a database problem" in result.stderr


def test_promtool_refuses_a_broken_expression(tmp_path):
    """The checks above can fail: promtool refuses a rules file with a bad expression."""
    broken = tmp_path / RULES.name
    broken.write_text(RULES.read_text().replace("expr: up{job=\"castord\"} == 0\n", "expr: up{job=\"castord\" == 0\n"))
    result = promtool("check", "rules", broken)
    assert result.returncode != 0 and "CastordDown" in result.stdout + result.stderr
