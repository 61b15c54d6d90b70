"""Keys that identify a call (a task name and its arguments), for unique= and cache_ttl=."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def call_key(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The same for equal JSON arguments, whatever the keyword order.

    Arguments JSON cannot express fall back to their repr(), which is only
    stable for simple types: give such tasks a key function (unique=lambda ...).
    """
    try:
        text = json.dumps([list(args), kwargs], sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr((args, sorted(kwargs.items())))
    return f"{name}:{hashlib.sha256(text.encode()).hexdigest()[:32]}"
