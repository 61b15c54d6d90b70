"""Loading the user's Manager from an `APP` string such as `main:manager`."""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING

from castor.errors import CastorError, StoreError

if TYPE_CHECKING:
    from castor.manager import Manager


class AppLoadError(CastorError):
    """APP is malformed, cannot be imported, or is not a castor.Manager."""


def load_manager(app: str, *, cwd_on_path: bool = True) -> Manager:
    """Import `module.path:variable` and return the Manager it names."""
    from castor.manager import Manager

    module_name, sep, attr = app.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(
            f"APP must look like 'module.path:variable' (for example main:manager), got {app!r}"
        )
    if cwd_on_path and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppLoadError(
                f"cannot import {module_name!r} for APP {app!r}: no module named {exc.name!r} "
                f"(run from the directory that holds it, or set PYTHONPATH)"
            ) from exc
        raise AppLoadError(f"importing {module_name!r} for APP {app!r} failed: {exc}") from exc
    except StoreError as exc:  # the module's Manager(...) could not use its database file
        raise AppLoadError(f"{exc} (while loading APP {app!r})") from exc
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any import-time failure of user code
        # sys.exit() at import time is a module that cannot be loaded, not a castord to stop with its code.
        raise AppLoadError(
            f"importing {module_name!r} for APP {app!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr!r} (APP {app!r})") from None
    if not isinstance(obj, Manager):
        raise AppLoadError(
            f"APP {app!r} is a {type(obj).__name__}, not a castor.Manager; "
            "point it at the object made by castor.Manager(db)"
        )
    try:
        obj.import_tasks()
    except Exception as exc:  # noqa: BLE001 - user code
        raise AppLoadError(
            f"APP {app!r}: importing its include= modules {list(obj.include)} raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return obj
