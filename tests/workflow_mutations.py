"""Check that the workflow contract tests see every ending path's advance (minutes).

For each call of the advance in the stores (and each wf_xact stamp on PostgreSQL), take
that one out of the source, run tests/contract/test_workflows.py (and the sweep's,
which replays ends through the advance) on that store, and
report the first test that fails; the file is restored after each run. A path whose
removal fails no test is one the tests do not cover: exit status 1.

    .venv/bin/python -m tests.workflow_mutations
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STORES = (("castor/store/sqlite.py", "sqlite"), ("castor/store/postgresql.py", "postgresql"))
# (what marks the line, what it becomes: the arguments still run, the advance does not)
MUTATIONS = (("self._advance(", "(lambda *a: None)("), ("{workflows.STAMP}", "wf_xact = NULL"))


def mutants() -> list[tuple[Path, str, int, str, str]]:
    found = []
    for path, store in STORES:
        for number, line in enumerate((REPO / path).read_text().splitlines()):
            for marker, replacement in MUTATIONS:
                if marker in line and not (store == "sqlite" and "STAMP" in marker):
                    found.append((REPO / path, store, number, marker, replacement))
    return found


def first_failure(store: str) -> str | None:
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-q", "-x",
                          "tests/contract/test_workflows.py", "tests/contract/test_workflow_sweep.py", "-k", store],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    failed = re.findall(r"^FAILED (\S+)", out.stdout, re.MULTILINE)
    return failed[0] if failed else None


def main() -> int:
    uncovered = 0
    for path, store, number, marker, replacement in mutants():
        original = path.read_text()
        lines = original.splitlines(keepends=True)
        lines[number] = lines[number].replace(marker, replacement)
        try:
            path.write_text("".join(lines))
            failure = first_failure(store)
        finally:
            path.write_text(original)
        where = f"{path.relative_to(REPO)}:{number + 1}"
        print(f"{where} without {marker!r}: " + (f"fails {failure}" if failure else "NO TEST FAILS"), flush=True)
        uncovered += failure is None
    return 1 if uncovered else 0


if __name__ == "__main__":
    sys.exit(main())
