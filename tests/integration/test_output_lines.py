"""castord/output.py's line writers and castor.logs.emit, in one process."""

from __future__ import annotations

import json
import logging
import threading

import pytest
import structlog

from castor import logs
from castord.logging import configure, priority
from castord.output import CHUNK, LineWriter


@pytest.fixture
def log_file(tmp_path):
    path = tmp_path / "log.jsonl"
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    sink = configure("thread-host", fmt="json", level="info", log_file=str(path))
    yield path
    root.removeHandler(sink.handler)
    sink.handler.close()
    sink.handler.stream.close()
    for handler in before:  # pytest's own
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
    logs.install_fast_path(None)


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_half_lines_of_two_threads_never_mix_and_each_carries_its_task(log_file):
    writer = LineWriter("stdout", 1)
    barrier = threading.Barrier(2)

    def task(name: str) -> None:
        structlog.contextvars.bind_contextvars(task_name=name)
        for i in range(50):
            writer.write(f"{name} part one {i}, ")
            barrier.wait()  # the other thread writes its half line in between
            writer.write(f"{name} part two {i}\n")
        structlog.contextvars.unbind_contextvars("task_name")

    threads = [threading.Thread(target=task, args=(n,)) for n in ("alpha", "beta")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    out = [e for e in lines(log_file) if e["event"] == "task.output"]
    assert len(out) == 100
    for e in out:
        name = e["task_name"]
        assert e["message"].startswith(f"{name} part one ") and f"{name} part two" in e["message"], e
        assert e["stream"] == "stdout" and e["level"] == "info" and e["role"] == "thread-host"


def test_flush_shows_a_partial_line_and_long_lines_are_cut(log_file):
    writer = LineWriter("stderr", 2)
    writer.write("Password: ")
    writer.flush()
    writer.write("x" * (CHUNK * 2 + 5) + "\n")
    out = [e["message"] for e in lines(log_file)]
    assert out == ["Password: ", "x" * CHUNK, "x" * CHUNK, "x" * 5]
    assert writer.fileno() == 2 and not writer.isatty()
    with pytest.raises(TypeError):
        writer.write(b"bytes")  # type: ignore[arg-type]


def test_emit_writes_what_structlog_would(log_file, monkeypatch):
    # castord's handler alone on the root, as in castord (pytest's own set aside): else
    # emit() takes structlog's path too, and the test would compare it with itself.
    monkeypatch.setattr(logging.root, "handlers", [logs._fast_handler])  # noqa: SLF001
    structured = logs.get_logger("castor.worker")
    structured.info("task.succeeded", task_id="a", duration_ms=1.5)
    logs.emit(logging.getLogger("castor.worker"), logging.INFO, "task.succeeded", {"task_id": "a", "duration_ms": 1.5})
    slow, fast = lines(log_file)
    for event in (slow, fast):
        event.pop("timestamp")
    assert slow == fast


def test_lines_together_hold_the_lines_for_one_write_at_the_end(log_file, monkeypatch):
    """A worker's batch of task ends (castor/worker.py): held, in order, through a
    nested block and an exception, then one write; the same text as emitted alone."""
    handler = logs._fast_handler  # noqa: SLF001 - the handler configure() installed
    monkeypatch.setattr(logging.root, "handlers", [handler])  # as in castord: pytest's own set aside
    writes: list[str] = []
    real_write = handler.stream.write
    monkeypatch.setattr(handler.stream, "write", lambda text: writes.append(text) or real_write(text))
    worker = logging.getLogger("castor.worker")
    logs.emit(worker, logging.INFO, "task.succeeded", {"task_id": "alone"})
    with pytest.raises(RuntimeError), logs.lines_together():
        for i in range(3):
            logs.emit(worker, logging.INFO, "task.succeeded", {"task_id": f"t{i}"})
            with logs.lines_together():  # nested: written at the outer block's end
                logs.emit(worker, logging.ERROR, "task.failed", {"task_id": f"f{i}"})
        assert len(writes) == 1 and lines(log_file)[-1]["task_id"] == "alone"  # nothing more yet
        raise RuntimeError("the block fails: what it held is written all the same")
    assert len(writes) == 2
    events = lines(log_file)
    assert [e["task_id"] for e in events] == ["alone", "t0", "f0", "t1", "f1", "t2", "f2"]
    assert [e["level"] for e in events[1:3]] == ["info", "error"]
    alone, held = dict(events[0]), dict(events[1])
    for event in (alone, held):
        event.pop("timestamp"), event.pop("task_id")
    assert alone == held


def test_lines_together_on_the_journal_give_each_line_its_priority(log_file, monkeypatch):
    handler = logs._fast_handler  # noqa: SLF001
    monkeypatch.setattr(logging.root, "handlers", [handler])
    monkeypatch.setattr(handler, "journal", True)
    with logs.lines_together():
        logs.emit(logging.getLogger("castor.worker"), logging.INFO, "task.succeeded", {"task_id": "a"})
        logs.emit(logging.getLogger("castor.worker"), logging.ERROR, "task.failed", {"task_id": "b"})
    first, second = log_file.read_text().splitlines()
    assert first.startswith(f"<{priority(logging.INFO)}>{{") and second.startswith(f"<{priority(logging.ERROR)}>{{")


def test_lines_together_without_castords_handler_changes_nothing(caplog):
    assert logs._fast_handler is None  # noqa: SLF001 - a client's process
    with caplog.at_level(logging.INFO, logger="castor.worker"), logs.lines_together():
        logs.emit(logging.getLogger("castor.worker"), logging.INFO, "task.succeeded", {"task_id": "c"})
        assert len(caplog.records) == 1  # through structlog, at once


def test_emit_respects_levels_and_other_handlers(log_file, tmp_path):
    logging.getLogger("castor.worker").setLevel(logging.WARNING)  # an APP turning successes down
    try:
        logs.emit(logging.getLogger("castor.worker"), logging.INFO, "task.succeeded", {"task_id": "quiet"})
    finally:
        logging.getLogger("castor.worker").setLevel(logging.NOTSET)
    assert lines(log_file) == []
    # Another handler on the root (an APP's own): the slow path, so that it gets the line too.
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    logging.getLogger().addHandler(keep)
    try:
        logs.emit(logging.getLogger("castor.worker"), logging.ERROR, "task.failed", {"task_id": "b"})
    finally:
        logging.getLogger().removeHandler(keep)
    assert len(seen) == 1 and [e["task_id"] for e in lines(log_file)] == ["b"]


def test_stdlib_records_keep_event_stable(log_file):
    logging.getLogger("acme").warning("%s items", 3, extra={"batch": "b-7"})
    try:
        raise ValueError("nope")
    except ValueError:
        logging.getLogger("acme").exception("it broke")
    first, second = lines(log_file)
    assert first["event"] == "log" and first["message"] == "3 items" and first["logger"] == "acme"
    assert first["batch"] == "b-7" and first["level"] == "warning"
    assert second["exc_type"] == "builtins.ValueError" and "Traceback" in second["traceback"]


def test_priorities():
    assert [priority(n) for n in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]
