"""Fresh, empty store locations for the benchmarks that run on both stores
(flow_control.py, workflows.py): beaver files in a temp dir, or databases on a private
throwaway PostgreSQL (fsync on: PostgreSQL's defaults), removed afterwards."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@contextmanager
def locations(store: str, prefix: str) -> Iterator[Iterator[str]]:
    """`store` ("sqlite" or "postgresql"): a fresh, empty location per next()."""
    if store == "sqlite":
        root = Path(tempfile.mkdtemp(prefix=f"castor-{prefix}-db-"))

        def files() -> Iterator[str]:
            k = 0
            while True:
                k += 1
                yield str(root / f"{prefix}{k}.db")

        try:
            yield files()
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    from tests.postgres import TestPostgres, ThrowawayServer  # noqa: PLC0415 - PostgreSQL runs only

    server = ThrowawayServer(fsync=True)
    server.start()
    pg = TestPostgres(server.url(), server)
    opened: list[Any] = []

    def databases() -> Iterator[str]:
        while True:
            cm = pg.database()
            opened.append(cm)
            yield cm.__enter__()

    try:
        yield databases()
    finally:
        for cm in reversed(opened):
            cm.__exit__(None, None, None)
        server.stop()
