"""Task storage. The only package in castor that speaks SQL."""

from __future__ import annotations

import os
from typing import Any

from castor.errors import ConfigurationError
from castor.store.base import NewTask, Query, Store, TaskRecord

__all__ = ["NewTask", "Query", "Store", "TaskRecord", "database_path", "open_store"]


def database_path(db: Any) -> str:
    """The file behind a BeaverDB, an AsyncBeaverDB, or a path."""
    if isinstance(db, (str, os.PathLike)):
        return os.fspath(db)
    engine = getattr(db, "_async_db", db)  # BeaverDB wraps an AsyncBeaverDB
    path = getattr(engine, "_db_path", None)
    if isinstance(path, (str, os.PathLike)):
        return os.fspath(path)
    raise ConfigurationError(
        f"Manager needs a beaver.BeaverDB or a path to its file, not {type(db).__name__}; "
        "for example castor.Manager(BeaverDB('app.db')) or castor.Manager('app.db')"
    )


def open_store(db: Any, *, lock_timeout: float = 30.0, durable: bool = False) -> Store:
    from castor.store.sqlite import SQLiteStore

    path = database_path(db)
    if path == ":memory:" or not path:
        raise ConfigurationError(
            "castor needs a database file that workers in other processes can open; "
            "':memory:' cannot be shared"
        )
    return SQLiteStore(path, lock_timeout=lock_timeout, durable=durable)
