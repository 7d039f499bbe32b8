"""Host (CPU) memory allocator settings for training and generation.

A training step allocates and frees the same large activation buffers (megabytes each) every step. glibc
serves requests above ``M_MMAP_THRESHOLD`` (128 KiB by default, adapting upward only after a free) with a
fresh ``mmap`` and unmaps them on free, so every step pays page faults and kernel zeroing on each new page:
~2 ms per 12 MB buffer here, about a tenth of a 6/6/384 training step. Raising the threshold to glibc's
maximum and not trimming the heap keeps those buffers in the process's heap, reused step after step.
The same effect as ``MALLOC_MMAP_THRESHOLD_=... MALLOC_TRIM_THRESHOLD_=...`` in the environment, but applied
by the program, so nobody has to know about it. It changes no numbers, only where memory comes from; the
price is that freed memory stays with the process (its RSS stays at the peak, which training reaches
anyway). Set ``GPTRS_MALLOC_TUNING=0`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's cap on 64-bit (HEAP_MAX_SIZE / 2); larger values are rejected
TRIM_THRESHOLD = 2**31 - 1  # (mallopt takes an int) never give the top of the heap back between steps
TOP_PAD = 64 * 1024 * 1024  # grow the heap in large steps: fewer brk calls while the first steps run

_applied: bool | None = None


def tune_host_allocator() -> bool:
    """Apply the settings above once per process; True when they are in effect.

    A no-op (False) off Linux/glibc or when ``GPTRS_MALLOC_TUNING=0``."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("GPTRS_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and friends have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
        )
    )
    _applied = ok
    return ok
