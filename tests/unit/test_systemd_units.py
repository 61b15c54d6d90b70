"""The shipped systemd units: the keys SPEC §4 asks for, systemd-analyze verify, and the
paths docs/deployment.md tells you to set up. (tests/system/test_systemd.py runs the
instance unit under a real systemd.)"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.tools import require_tool

UNITS = REPO / "systemd"


def parse(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path)
    return parser


@pytest.mark.parametrize("name", ["castord@.service", "castord-example.service"])
def test_unit_keys(name):
    unit = parse(UNITS / name)
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["KillMode"] == "mixed"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "3"
    assert "castord start" in service["ExecStart"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_instance_unit_reads_the_apps_env_file():
    service = parse(UNITS / "castord@.service")["Service"]
    assert service["EnvironmentFile"] == "/etc/castord/%i.env"


def test_systemd_analyze_verify(tmp_path):
    require_tool("systemd-analyze", "apt-get install systemd")
    castord = str(Path(sys.executable).parent / "castord")
    for name, target in [("castord@.service", "castord@myapp.service"),
                         ("castord-example.service", "castord-example.service")]:
        text = (UNITS / name).read_text()
        # verify checks that ExecStart's binary exists: point it at ours.
        text = text.replace("/usr/local/bin/castord", castord).replace("/srv/myapp/.venv/bin/castord", castord)
        (tmp_path / target).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "castord@myapp.service", "castord-example.service"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


@pytest.mark.parametrize("name", ["castord@.service", "castord-example.service"])
def test_units_create_owner_only_files(name):
    service = parse(UNITS / name)["Service"]
    assert service["UMask"] == "0077"


def test_the_deployment_steps_set_up_what_the_instance_unit_uses():
    """Step by step, docs/deployment.md links castord where ExecStart= looks, writes the env
    file EnvironmentFile= reads, and makes the directory ReadWritePaths= allows."""
    service = parse(UNITS / "castord@.service")["Service"]
    steps = (REPO / "docs" / "deployment.md").read_text().split("## What the unit does")[0]
    binary = service["ExecStart"].split()[0]
    assert re.search(rf"ln -s \S+/bin/castord {re.escape(binary)}\n", steps), binary
    assert service["EnvironmentFile"].replace("%i", "myapp") in steps
    assert service["ReadWritePaths"] == "/var/lib/%i" and service["StateDirectory"] == "%i"
    assert "install -d -o myapp -g myapp /var/lib/myapp" in steps
    assert (service["User"], service["Group"]) == ("%i", "%i") and "useradd --system" in steps
