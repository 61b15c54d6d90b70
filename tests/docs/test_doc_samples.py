"""Every code sample in README.md and docs/*.md runs (conventions: tests/docs/runner.py).

One test per page, so a failure names the page. Each page runs in a fresh temp
directory: its Python blocks in one session, its shell blocks with bash, a
foreground `castord start` in the background until the page ends.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from tests.docs.runner import REPO, DocError, parse, run_page

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# What the samples show in comments, asserted after the page's last block (in
# its Python session, with its castord still running).
CHECKS = {
    "README.md": """
        assert task.join(timeout=5) == 30 and task.status() == "success"
    """,
    "quickstart.md": """
        from tasks import process_payment
        assert task.join(timeout=5) == 30 and bool(task) and task.status() == "success"
        assert process_payment.delay("o-1").join(timeout=10) == {"status": "ok", "processed_order": "o-1"}
        from main import db
        assert db.dict("payments")["o-1"] == "paid"
    """,
    "tasks.md": """
        try:
            later.status()
        except castor.UnknownTaskError:
            pass
        else:
            raise AssertionError("forget() left the record")
        try:
            retried.join(timeout=5)
        except ValueError:
            pass
        assert retried.attempts >= 2 and len(retried.history) >= 2, retried.history
        try:
            resize.delay("wide", 10)
        except castor.InvalidArguments as exc:
            assert "width: Input should be a valid integer" in str(exc), exc
        else:
            raise AssertionError("validate=True let bad arguments through")
        assert wait_and_add.delay(1, 2).join(timeout=5) == 3
    """,
    "periodic.md": """
        import main
        assert sorted(main.manager.schedules) == ["cleanup", "heartbeat", "report"]
    """,
    "migrating-from-celery.md": """
        assert result.get(timeout=10) == 1.08 and manager.AsyncResult(result.id).state == "SUCCESS"
        assert later.status() == "cancelled"
        assert [t.get(timeout=10) for t in batch] == [1.08, 1.27]
        email = manager.get(invoice_and_email.delay(8).get(timeout=10))
        assert email.join(timeout=10) == "sent invoice-8.pdf"
    """,
    "migrating-from-huey.md": """
        assert result.join(timeout=10) == "receipt for order 42 sent"
        assert later.status() == "cancelled"
        assert send_receipt(1) == "receipt for order 1 sent"  # a plain call runs inline
    """,
    "monitoring.md": """
        import json
        events = [json.loads(line)["event"] for line in open("castord.log")]
        assert {"castord.ready", "task.failed", "metrics.serving", "castord.stopped"} <= set(events), events
        assert "castor_tasks{" in metrics and json.load(open("status.json"))["running"]
    """,
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_samples_run(page: Path, tmp_path: Path) -> None:
    workdir, harness = tmp_path / "page", tmp_path / "harness"
    workdir.mkdir()
    harness.mkdir()
    check = CHECKS.get(page.name)
    try:
        report = run_page(page, workdir, harness, seconds=150, check=textwrap.dedent(check) if check else None)
    except DocError as exc:
        pytest.fail(str(exc), pytrace=False)
    for block in report.skipped:  # every skipped sample says why
        assert block.not_run, block.where


def test_every_page_with_a_check_exists() -> None:
    assert set(CHECKS) <= {p.name for p in PAGES}


def test_pages_have_samples_that_run() -> None:
    """Most samples run; the not-run ones are the exception (and listed with reasons)."""
    blocks = [b for page in PAGES for b in parse(page) if b.is_sample]
    skipped = [b for b in blocks if b.not_run]
    assert len(blocks) - len(skipped) > 2 * len(skipped), [f"{b.where}: {b.not_run}" for b in skipped]


def test_the_index_maps_every_page() -> None:
    """docs/index.md lists every page in reading order, and README.md points to it."""
    linked = set(re.findall(r"\]\(([\w.-]+\.md)(?:#[\w-]*)?\)", (REPO / "docs" / "index.md").read_text()))
    pages = {p.name for p in PAGES if p.parent.name == "docs" and p.name != "index.md"}
    assert pages - linked == set(), "pages missing from docs/index.md's map"
    assert "](docs/index.md)" in (REPO / "README.md").read_text()


# -- the conventions themselves --------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent(text))
    return page


def test_a_marker_needs_a_reason(tmp_path: Path) -> None:
    page = write(tmp_path, """
        <!-- not run: -->
        ```bash
        rm -rf /
        ```
    """)
    with pytest.raises(DocError, match="needs a reason"):
        parse(page)


def test_a_marker_must_precede_a_block(tmp_path: Path) -> None:
    page = write(tmp_path, """
        <!-- not run: forgotten -->
        Some prose.
    """)
    with pytest.raises(DocError, match="right before a code block"):
        parse(page)


def test_unknown_languages_are_refused(tmp_path: Path) -> None:
    page = write(tmp_path, """
        ```pyhton
        print("typo")
        ```
    """)
    with pytest.raises(DocError, match="unknown code block language 'pyhton'"):
        parse(page)


def test_indented_blocks_files_and_markers(tmp_path: Path) -> None:
    page = write(tmp_path, """
        1. A step:

           ```python
           # app.py
           X = 1
           ```

        <!-- not run: needs root -->
        ```bash
        useradd someone
        ```
    """)
    app, shell = parse(page)
    assert (app.file_name, app.code, app.line) == ("app.py", "# app.py\nX = 1\n", 4)
    assert (shell.lang, shell.not_run) == ("bash", "needs root")


def test_a_failing_sample_fails_the_page_and_names_its_line(tmp_path: Path) -> None:
    page = write(tmp_path, """
        ```python
        # helper.py
        VALUE = 41
        ```

        ```python
        from helper import VALUE
        answer = VALUE + 1
        ```

        ```bash
        test -f helper.py
        ```

        ```python
        assert answer == 43, "wrong"
        ```
    """)
    (tmp_path / "w").mkdir()
    (tmp_path / "h").mkdir()
    with pytest.raises(DocError) as failure:
        run_page(page, tmp_path / "w", tmp_path / "h", seconds=60)
    message = str(failure.value)  # the block's fence line, then the failing line in the traceback
    assert "page.md:16: the Python sample failed" in message and 'page.md", line 17' in message
    assert "AssertionError: wrong" in message


def test_a_failing_shell_command_fails_the_page(tmp_path: Path) -> None:
    page = write(tmp_path, """
        ```bash
        true
        false
        echo never
        ```
    """)
    (tmp_path / "w").mkdir()
    with pytest.raises(DocError, match="exited with 1"):
        run_page(page, tmp_path / "w", tmp_path, seconds=30)
