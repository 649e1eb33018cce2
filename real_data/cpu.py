"""CPU settings that change how fast training runs, not what it computes.

glibc's ``malloc`` serves every block above its *mmap threshold* (128 KiB at start, raised dynamically
up to 32 MiB as mmapped blocks are freed) with a fresh ``mmap`` and returns it with ``munmap`` on free,
and it trims the top of the heap back to the system above the *trim threshold*. An AT epoch allocates
and frees the same activation-sized blocks (0.1-30 MB) thousands of times, so each is paged in anew:
measured on one epoch of the Fashion-MNIST small CNN (2-core VM), 0.1 to 1.1 s of system time on 3.6-4 s
of user time depending on where the dynamic threshold happened to be, against 0.13 s with the thresholds
fixed (``benchmarks/real_data_cpu_epoch.py``). :func:`tune_allocator` fixes them through ``mallopt``; the
numbers computed are unchanged (only where memory comes from).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["tune_allocator"]

_M_TRIM_THRESHOLD = -1   # glibc malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024   # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 256 * 1024 * 1024  # keep up to this much freed memory at the top of the heap


@functools.lru_cache(maxsize=1)
def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; False where there is no glibc (no-op)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
