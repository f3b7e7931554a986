"""glibc heap settings: a long-running server's RSS kept flat, a CPU training loop kept off mmap.

**Server** (``fix_mmap_threshold``, ``trim``). Measured on ``kame serve`` (tiny front-end, Whisper STT,
sessions joining and leaving): Python's heap (tracemalloc) and glibc's bytes in use
(``mallinfo2().uordblks``) stay flat over a hundred sessions, yet RSS grows, because freed memory stays
in glibc's arenas as fragmented free chunks. The cause is glibc's dynamic mmap threshold: once a large
block (a Whisper mel window, an STFT buffer, an audio clip) is freed, the threshold rises to its size
and later blocks of that size are carved from the heap, where blocks of varying lifetimes fragment it. A
fixed threshold keeps every block of 256 KiB or more in its own mapping, returned to the system when
freed; ``trim`` hands back the free pages that remain inside the arenas; ``limit_arenas`` keeps two
arenas instead of one per contending thread (the 20-minute soak's server started at 807 instead of
902 MB; its growth over the run stayed about the same, +63 against +64 MB: that growth was the
sessions' uncollected garbage, see ``kame.server.garbage``).

**CPU training** (``keep_blocks_in_heap``): the opposite need. Every step allocates and frees the
same large tensors (a tiny LM's audio logits are 10 MB); mapped afresh each time, every page is
faulted in again. Kept in the heap (and up to 1 GiB of free memory kept), a tiny unmuted step took
91 instead of 120 ms.

Elsewhere (macOS, musl) all of these do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 256 * 1024
SERVER_ARENAS = 2
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems
TRAINING_TRIM_THRESHOLD = 1024 * 1024 * 1024


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only: raises AttributeError elsewhere
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def _set(parameter: int, value: int, name: str) -> bool:
    """``mallopt(parameter, value)``; False (and a warning) when glibc refuses it or is not there."""
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(parameter, ctypes.c_int(value)))
    if not ok:
        logger.warning("mallopt(%s, %d) was refused", name, value)
    return ok


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Blocks of ``threshold`` bytes or more get their own mapping, always (no dynamic threshold).
    Call early in the process; returns whether the allocator took it."""
    return _set(M_MMAP_THRESHOLD, threshold, "M_MMAP_THRESHOLD")


def limit_arenas(arenas: int = SERVER_ARENAS) -> bool:
    """At most ``arenas`` malloc arenas. glibc gives threads that contend for the heap their own
    arenas (up to eight per core), and each fragments on its own; a server's threads (STT, LLM
    clients, the event loop) then keep several partly free heaps. Call before threads start."""
    return _set(M_ARENA_MAX, arenas, "M_ARENA_MAX")


def keep_blocks_in_heap() -> bool:
    """Blocks under 32 MiB come from the heap and free memory is not handed back below 1 GiB: a loop
    that reuses the same tensors every step stops faulting their pages in. Returns whether both took."""
    mapped = _set(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD, "M_MMAP_THRESHOLD")
    trimmed = _set(M_TRIM_THRESHOLD, TRAINING_TRIM_THRESHOLD, "M_TRIM_THRESHOLD")
    return mapped and trimmed


def trim() -> bool:
    """Return free pages of every arena to the system (``malloc_trim(0)``); True if any were.

    It walks the arenas under their locks (milliseconds): call it off the event loop."""
    libc = _libc()
    return bool(libc.malloc_trim(ctypes.c_size_t(0))) if libc is not None else False
