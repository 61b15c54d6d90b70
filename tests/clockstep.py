"""A wall clock the tests can step, in every process at once.

Put `sitecustomize.py` with `sitecustomize(VAR)`'s text on the PYTHONPATH of the
processes a test starts, and VAR in their environment naming an 8-byte file: each
of them then reads `time.time()` (and `time_ns`) plus the offset the file holds,
which the test changes at will (a step of the host's clock, `date -s`). The boot
and monotonic clocks are left alone, as a real step leaves them.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

_TEMPLATE = '''
import mmap, os, struct, time

_path = os.environ.get("{var}")
if _path:
    _fd = os.open(_path, os.O_RDONLY)
    _map = mmap.mmap(_fd, 8, prot=mmap.PROT_READ)
    _real_time, _real_time_ns = time.time, time.time_ns

    def _offset():
        return struct.unpack_from("d", _map)[0]

    time.time = lambda: _real_time() + _offset()
    time.time_ns = lambda: _real_time_ns() + int(_offset() * 1e9)
'''


def sitecustomize(var: str) -> str:
    return _TEMPLATE.format(var=var)


def read_offset(path: Path) -> float:
    return struct.unpack("d", path.read_bytes())[0]


def set_offset(path: Path, seconds: float) -> None:
    """Create the file, or change the offset in place (readers have it mapped)."""
    if not path.exists():
        path.write_bytes(struct.pack("d", seconds))
        return
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 8) as m:
        struct.pack_into("d", m, 0, seconds)
