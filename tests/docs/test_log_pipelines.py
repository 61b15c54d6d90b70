"""The docs' `journalctl … | jq …` pipelines, run on real castord output.

`journalctl -u castord@myapp -o cat` prints castord's JSON lines and systemd's own
lines about the unit. Here castord runs for real (a task fails, a child crashes), its
output is interleaved with the lines systemd writes, and each pipeline the docs show
runs on that with `journalctl …` replaced by `cat` of it (for `-p err`: of the lines at
priority err or worse, as journald would select them). Under a real systemd the same
commands run in tests/system/.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_until
from tests.process.test_log_stream import LOUDAPP, Stream
from tests.tools import require_tool

PAGES = ("docs/monitoring.md", "docs/deployment.md")
JOURNALCTL = re.compile(r"^journalctl -u castord@myapp (?P<priority>-p err )?-o cat \| (?P<rest>jq .*)$")
SYSTEMD_LINES = [
    "Starting castord@myapp.service - castord task supervisor for myapp...",
    "Started castord@myapp.service - castord task supervisor for myapp.",
    "Reloading castord@myapp.service - castord task supervisor for myapp...",
    "castord@myapp.service: Deactivated successfully.",
    "castord@myapp.service: Consumed 1.042s CPU time.",
]
SEVERE = {"error", "critical"}


def documented_pipelines() -> list[str]:
    found = []
    for page in PAGES:
        for line in (REPO / page).read_text().splitlines():
            if line.startswith("journalctl -u castord@myapp") and "| jq" in line:
                found.append(line)
    return found


def test_the_docs_show_pipelines_that_skip_non_json_lines():
    pipelines = documented_pipelines()
    assert len(pipelines) >= 4
    for line in pipelines:
        assert JOURNALCTL.match(line), f"not in the tested form: {line}"
        assert "fromjson?" in line, f"stops at systemd's own lines: {line}"


@pytest.mark.timeout(120)
def test_documented_pipelines_work_on_real_output(app_dir: Path, tmp_path: Path):
    jq = require_tool("jq")
    (app_dir / "loudapp.py").write_text(textwrap.dedent(LOUDAPP))
    sys.modules.pop("loudapp", None)
    import loudapp

    stream = Stream(app_dir)
    try:
        wait_until(lambda: "castord.ready" in stream.out.read_text(), 30, "castord to be ready")
        for failing in (loudapp.tboom.delay(), loudapp.pboom.delay(), loudapp.lost.delay()):
            with pytest.raises(Exception):  # noqa: B017 - each fails its own way
                failing.join(timeout=60)
        assert loudapp.loud.delay(1).join(timeout=20) == 1
    finally:
        assert stream.stop() == 0
        loudapp.manager.close()
        sys.modules.pop("loudapp", None)
    lines = stream.lines()
    failed = [json.loads(line) for line in lines if json.loads(line)["event"] == "task.failed"]
    assert len(failed) == 3
    # As `journalctl -u … -o cat` shows it: systemd's lines around and between castord's.
    journal = [SYSTEMD_LINES[0], SYSTEMD_LINES[1], *lines[:5], SYSTEMD_LINES[2], *lines[5:], *SYSTEMD_LINES[3:]]
    everything = tmp_path / "journal-all.txt"
    everything.write_text("\n".join(journal) + "\n")
    # journalctl -p err: journald selects by the priority castord gave each line.
    severe = tmp_path / "journal-err.txt"
    severe.write_text("\n".join(line for line in lines if json.loads(line)["level"] in SEVERE) + "\n")

    # The pipeline the docs showed before: jq stops at systemd's first line.
    old = subprocess.run(["bash", "-o", "pipefail", "-c",
                          f"cat {everything} | {jq} 'select(.event == \"task.failed\")'"],
                         capture_output=True, text=True, timeout=30)
    assert old.returncode != 0 and "Invalid" in old.stderr

    for pipeline in documented_pipelines():
        match = JOURNALCTL.match(pipeline)
        assert match is not None
        source = severe if match["priority"] else everything
        command = f"cat {source} | {match['rest'].replace('jq ', jq + ' ', 1)}"
        result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, (pipeline, result.stderr)
        out = [json.loads(line) for line in result.stdout.splitlines()]
        assert out, pipeline
        if 'select(.event == "task.failed")' in pipeline:
            assert sorted(e["task_id"] for e in out) == sorted(e["task_id"] for e in failed)
        elif "child.exited" in pipeline:
            assert all(e["event"] == "child.exited" and e["expected"] is False for e in out)
        elif "{task_id, task_name, exc_type, exc_message}" in pipeline:
            assert {e["task_name"] for e in out if e["task_name"]} == {"tboom", "pboom", "lost"}
        else:
            pytest.fail(f"no expectation for a documented pipeline: {pipeline}")
