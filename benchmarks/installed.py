"""castor measured as installed: its modules' bytecode compiled, as pip compiles a wheel's
modules when it installs them.

The benchmarks run castor from this checkout (an editable install). An environment that
sets PYTHONDONTWRITEBYTECODE (this project's machines do) then compiles castor's own
modules again in every process at every start (~0.1 s in a castord master, more in its
children), a cost no installed castor pays, while the peers beside it (Huey,
procrastinate) are installed packages with their bytecode. Compiling once before the
runs puts castor on the same footing; nothing else changes."""

from __future__ import annotations

import compileall
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def compile_castor() -> None:
    """Write the bytecode of castor's and castord's modules (skipped where it is current)."""
    for package in ("castor", "castord"):
        if not compileall.compile_dir(REPO / package, quiet=1):
            raise RuntimeError(f"compiling {package} failed: see above")
