"""Memory estimates for the resource analysis and the pattern commands: work that would
not fit in the memory available is refused before anything is allocated, with both figures
and the fix. Imports only the standard library."""

from __future__ import annotations

import os
from typing import List, Optional

from sah.infra.checks import ConfigError

# Peak bytes measured with tracemalloc (patterns of side 2048 and 8192, N = 1..256):
# per active point with int32 columns (int64 from 2**31 points on: twice that), per step
# of the schedule (Python lists and their arrays) and per row.
_BYTES_PER_POINT = {"row_first": 10, "column_first": 31}
_BYTES_PER_STEP = 160
_BYTES_PER_ROW = 64
BYTES_PER_DENSE_CELL = 80  # sah patterns --full_png: labels, temporaries and the figure


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.3g} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.3g} PiB"  # pragma: no cover


def available_memory_bytes() -> Optional[int]:
    """Memory this process can still take: ``MemAvailable`` of /proc/meminfo, capped by a
    cgroup v2 limit when there is one; None when unknown."""
    found: List[int] = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current") as fh:
            current = int(fh.read().strip())
        if limit != "max":
            found.append(max(0, int(limit) - current))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, OSError, ValueError):
            return None
    return min(found)


def rows_bytes(rows: int) -> int:
    """Per-row arrays of a pattern's points (indptr, counts, temporaries)."""
    return int(rows) * _BYTES_PER_ROW


def analysis_bytes(active: int, rows: int, num_multiplications: int = 64, read_limit: int = 1000,
                   order: str = "row_first") -> int:
    """Estimated peak memory of building the points and analysing them."""
    per_point = _BYTES_PER_POINT.get(order, _BYTES_PER_POINT["column_first"])
    if max(active, rows) >= 2 ** 31:
        per_point *= 2
    steps = -(-active // max(1, min(int(num_multiplications), int(read_limit) - 1)))
    return int(active * per_point + steps * _BYTES_PER_STEP + rows * _BYTES_PER_ROW)


def check_memory(needed: int, what: str, fix: str) -> None:
    """Refuse (:class:`ConfigError`) work that needs more memory than is available."""
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise ConfigError(f"{what} needs about {format_bytes(needed)} of memory and about "
                          f"{format_bytes(available)} is available; {fix}")
