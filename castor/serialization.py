"""How arguments and results are written to the database: JSON by default, pickle opt-in."""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol

from castor.errors import ConfigurationError, SerializationError


class Serializer(Protocol):
    name: str

    def dumps(self, value: Any) -> str | bytes: ...

    def loads(self, data: str | bytes) -> Any: ...


class JsonSerializer:
    """Readable in the file with any SQLite tool; tuples come back as lists."""

    name = "json"
    _encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True)

    def dumps(self, value: Any) -> str:
        text = self._encoder.encode(value)
        if not text.isascii():  # O(1) for ASCII text: the common case pays nothing
            _check_utf8(text)
        return text

    def loads(self, data: str | bytes) -> Any:
        return json.loads(data)


def _check_utf8(text: str) -> None:
    """SQLite stores text as UTF-8, which cannot hold a lone surrogate ("\\ud800"):
    refuse it here, where the caller names the culprit, not later in the INSERT
    (a bare UnicodeEncodeError at enqueue, or in a worker's settle for a result)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"a string holds a lone surrogate {exc.object[exc.start:exc.end]!r}, "
            "which UTF-8 (and so SQLite) cannot store"
        ) from None


class PickleSerializer:
    """Any picklable object; only for files that no untrusted party can write."""

    name = "pickle"

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: str | bytes) -> Any:
        raw = data.encode() if isinstance(data, str) else data
        return pickle.loads(raw)  # noqa: S301 - opt-in, documented in docs/tasks.md


SERIALIZERS: dict[str, Serializer] = {"json": JsonSerializer(), "pickle": PickleSerializer()}


def get_serializer(name: str) -> Serializer:
    try:
        return SERIALIZERS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown serializer {name!r}; use serializer='json' (the default) or 'pickle'"
        ) from None


def encode_call(
    serializer: Serializer, task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str | bytes, str | bytes]:
    """Encode a call's arguments, or raise SerializationError naming the one that fails."""
    try:
        if not kwargs and serializer.name == "json":  # the common case, spared an encode
            return serializer.dumps(list(args)), "{}"
        return serializer.dumps(list(args)), serializer.dumps(kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised with the culprit named
        raise SerializationError(_explain(serializer, task_name, args, kwargs, exc)) from exc


def _explain(
    serializer: Serializer, task_name: str, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
) -> str:
    culprit = "its arguments"
    for label, value in [(f"argument {i}", v) for i, v in enumerate(args)] + [
        (f"keyword argument {k!r}", v) for k, v in kwargs.items()
    ]:
        try:
            serializer.dumps(value)
        except Exception:  # noqa: BLE001 - probing which value fails
            culprit = f"{label} ({type(value).__name__})"
            break
    hint = (
        " Pass plain JSON types (str, int, float, bool, None, list, dict), "
        "or create the Manager with serializer='pickle'."
        if serializer.name == "json"
        else ""
    )
    return f"cannot enqueue {task_name}: {culprit} is not {serializer.name}-serializable ({exc}).{hint}"
