"""The clocks castor measures by.

* Wall-clock time (`time.time()`): what users see and ask for — enqueued_at,
  started_at, finished_at, an ETA or countdown. An operator or NTP may step it.
* The boot clock (`boot_clock()`): seconds since the host booted, suspend
  included (Linux CLOCK_BOOTTIME). The same in every process of the host and
  never stepped, so leases and heartbeats between processes are measured on it:
  a wall-clock step can neither expire a live worker's lease (a second run
  beside the first) nor stretch a dead one's.

It restarts at 0 on every boot, so a lease is only meaningful on the boot that
wrote it: the store records the boot's id and expires older leases when it
changes (castor/store/sqlite.py).
"""

from __future__ import annotations

import time

_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"

if hasattr(time, "CLOCK_BOOTTIME"):
    def boot_clock() -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
else:  # pragma: no cover - not Linux: the monotonic clock is host-wide too, suspend aside
    boot_clock = time.monotonic


def boot_id() -> str:
    """This boot's identity: Linux's random boot id, else the wall time it booted at."""
    try:
        with open(_BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:  # pragma: no cover - not Linux
        return f"booted-at:{round(time.time() - boot_clock())}"
