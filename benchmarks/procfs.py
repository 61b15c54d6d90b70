"""What the benchmarks read of a process tree from /proc: pids, CPU seconds, RSS."""

from __future__ import annotations

import os
from pathlib import Path


def descendants(root: int) -> list[int]:
    """`root` and every process under it."""
    out, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        out.append(pid)
        frontier.extend(int(k) for k in kids)
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime so far (0 once the process is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
