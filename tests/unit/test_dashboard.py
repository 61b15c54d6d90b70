"""The dashboard's pure parts: the log tail, the latest-tasks list and drawing a frame."""

from __future__ import annotations

import json
import time

from rich.console import Console

from castord.dashboard import LATEST_ROWS, LogTail, View, _latest, render
from castord.tally import Tally


def test_log_tail_reads_only_new_complete_lines(tmp_path):
    path = tmp_path / "castor.log"
    path.write_text('{"event": "before the dashboard"}\n')
    tail = LogTail(str(path))
    with path.open("a") as f:
        f.write(json.dumps({"event": "child.ready", "level": "info"}) + "\n")
        f.write("printed by a task\n")
        f.write('{"event": "half a li')
    tail.poll()
    assert list(tail.lines) == [{"event": "child.ready", "level": "info"}, "printed by a task"]
    with path.open("a") as f:
        f.write('ne"}\n')
    tail.poll()
    assert tail.lines[-1] == {"event": "half a line"}


def test_log_tail_starts_over_after_truncation_and_survives_a_missing_file(tmp_path):
    path = tmp_path / "castor.log"
    path.write_text("old line that is rather long\n")
    tail = LogTail(str(path))
    path.write_text("new\n")  # rotated by copytruncate: shorter than where we were
    tail.poll()
    assert list(tail.lines) == ["new"]
    path.unlink()
    tail.poll()  # nothing to read; no error
    assert list(tail.lines) == ["new"]


def test_tally_keeps_the_latest_finished_tasks_across_a_merge():
    child, master = Tally(), Tally()
    child.add("add", "success", 0.01, "id-1")
    time.sleep(0.001)
    child.add("boom", "failed", 0.02, "id-2")
    master.merge(child.take())
    assert [r[0] for r in master.latest()] == ["id-2", "id-1"]  # newest first
    assert child.take() is None  # taken once


def test_latest_lists_running_tasks_first_and_keeps_to_the_panel_size():
    running = [{"id": "r1", "name": "slow", "started_at": time.time() - 2}]
    finished = [[f"f{i}", "add", "success", 0.001, time.time()] for i in range(20)]
    rows = _latest(running, finished)
    assert rows[0]["id"] == "r1" and rows[0]["status"] == "running" and rows[0]["seconds"] >= 2
    assert len(rows) == LATEST_ROWS and rows[1]["status"] == "success"


def _view(**overrides):
    fields = dict(
        app="myapp:manager", pid=4242, state="running", uptime_s=75, database="/srv/app.db",
        process_busy=1, process_total=2, thread_busy=3, thread_total=4,
        pending={"default": 12, "reports": 3}, finished={"success": 1234, "failed": 5, "retry": 2},
        rate=87.5, latest=[{"id": "0190aaaa-bbbb-7ccc-8ddd-eeeeffff0001", "name": "send_email",
                            "status": "failed", "seconds": 0.25}],
        log_lines=[{"timestamp": "2026-11-23T10:00:01.5Z", "level": "error", "event": "task.failed",
                    "task_name": "send_email"}, "a line a task printed"],
    )
    fields.update(overrides)
    return View(**fields)


def _draw(view, height=40, width=100):
    console = Console(width=width, height=height, record=True, color_system=None)
    console.print(render(view, height))
    return console.export_text()


def test_a_frame_shows_every_section():
    text = _draw(_view())
    assert "castor myapp:manager" in text and "pid 4242" in text and "0:01:15" in text
    assert "1/2 busy" in text and "3/4 busy" in text
    assert "done 1,234" in text and "failed 5" in text and "retried 2" in text
    assert "87.5 tasks/s" in text
    assert "default" in text and "12" in text and "reports" in text
    assert "ffff0001" in text and "send_email" in text and "250 ms" in text
    assert "10:00:01 error" in text and "task.failed task_name=send_email" in text
    assert "a line a task printed" in text
    assert "Ctrl+C: drain" in text


def test_a_draining_frame_says_what_a_second_ctrl_c_does():
    text = _draw(_view(state="draining"))
    assert "draining" in text and "Ctrl+C again: stop now" in text


def test_a_small_terminal_still_draws():
    text = _draw(_view(log_lines=[f"line {i}" for i in range(100)]), height=20, width=60)
    assert "castor" in text
    assert "line 99" in text and "line 0" not in text  # only the newest log lines fit
