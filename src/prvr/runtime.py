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
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
_done = False
_released = False  # `release_freed_memory` undid `tune_allocator`


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


def release_freed_memory() -> bool:
    """Undo `tune_allocator` for a training step whose peak it raises (a model with
    `training_keeps_freed_memory = False`): every block of 128 KiB or more is mmapped and unmapped when freed, and
    the heap is trimmed. The step page-faults its activations back in, but its peak RSS is the memory in use:
    kept in one heap, the freed activations of chunked recomputation fragment it (Holmes, a 128-video step:
    5.9 GB against 3.0 GB, for 40 against 50 CPU-s). No-op unless `tune_allocator` was applied."""
    global _done, _released
    if not _done:
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    ok = (libc.mallopt(M_MMAP_MAX, 65536) == 1 and libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1
          and libc.mallopt(M_TRIM_THRESHOLD, 256 * 1024) == 1)
    _done, _released = not ok, ok
    return ok


def allocator_for_training(keeps_freed_memory: bool) -> bool:
    """Before a model's training (its `training_keeps_freed_memory`): give freed memory back, or keep it again if an
    earlier model of this process had it given back (`prvr compare` trains several models in one process); the
    tuning stays off where the entry point never applied it. Returns whether the heap keeps freed memory."""
    global _released
    if not keeps_freed_memory:
        release_freed_memory()
        return False
    if _released:
        _released = False
        tune_allocator()
    return _done
