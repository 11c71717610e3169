"""Process-level tuning for the CPU hot path.

glibc serves large blocks (every activation tensor of a training step) with mmap and unmaps them on free,
so each step page-faults gigabytes back in: on 2 cores that was a third of the step time. Keeping freed
memory in the heap (no mmap, no trimming) removes it. Call once, early, from entry points.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_done = False


def tune_allocator() -> bool:
    """Ask glibc to keep freed memory for reuse. No-op elsewhere or with PRVR_NO_MALLOC_TUNING=1."""
    global _done
    if _done or not sys.platform.startswith("linux") or os.environ.get("PRVR_NO_MALLOC_TUNING"):
        return _done
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1  # a C int: larger values wrap
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok
