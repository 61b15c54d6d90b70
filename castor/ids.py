"""Task ids: UUID version 7 (RFC 9562), time-ordered.

Random UUID4s land on random pages of the primary-key index, so every enqueue
dirties (and writes to the WAL) a different page; time-ordered ids append to
the same page, which makes enqueueing markedly cheaper.
"""

from __future__ import annotations

import os
import time


def new_task_id() -> str:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 random bits, 74 used
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a: 12 bits
    value |= 0b10 << 62  # RFC 9562 variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b: 62 bits
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
