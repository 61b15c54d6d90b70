"""validate=True: check a task's arguments against its type hints at `.delay()`.

Uses pydantic (the `castor[validation]` extra). Bad arguments raise
castor.InvalidArguments in the caller, before anything is stored; the task
itself still receives the arguments exactly as they were given.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from castor.errors import ConfigurationError, InvalidArguments


def build_validator(fn: Callable[..., Any], where: str) -> Callable[[tuple[Any, ...], dict[str, Any]], None]:
    try:
        import pydantic
    except ImportError:
        raise ConfigurationError(
            f"{where}: validate=True needs pydantic; install it with: pip install 'castor[validation]'"
        ) from None
    try:
        hints = inspect.get_annotations(fn, eval_str=True)
    except Exception as exc:  # noqa: BLE001 - a hint that names something undefined
        raise ConfigurationError(f"{where}: validate=True cannot read the type hints: {exc}") from None

    # A stand-in with the task's signature: pydantic checks the call against it
    # without running the task's function.
    def check(*args: Any, **kwargs: Any) -> None:
        return None

    check.__signature__ = inspect.signature(fn).replace(  # type: ignore[attr-defined]
        return_annotation=inspect.Signature.empty)
    check.__annotations__ = {k: v for k, v in hints.items() if k != "return"}
    try:
        validated = pydantic.validate_call(config={"arbitrary_types_allowed": True})(check)
    except Exception as exc:  # noqa: BLE001 - PydanticUserError, or a NameError in a string hint
        raise ConfigurationError(f"{where}: validate=True cannot use these type hints: {exc}") from None
    name = getattr(fn, "__qualname__", repr(fn))
    # pydantic reports positional arguments by index; say their names instead.
    positional = [p.name for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def where_in_call(loc: tuple[Any, ...]) -> str:
        parts = [positional[p] if i == 0 and isinstance(p, int) and p < len(positional) else str(p)
                 for i, p in enumerate(loc)]
        return ".".join(parts) or "arguments"

    def validate(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            validated(*args, **kwargs)
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{where_in_call(e['loc'])}: {e['msg']}" for e in exc.errors())
            raise InvalidArguments(f"bad arguments for {name}: {problems}") from None

    return validate
