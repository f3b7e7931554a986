"""``kame.heap``: each glibc setting checked from glibc's own accounting, in a fresh process per mode."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kame import heap

pytestmark = pytest.mark.skipif(heap._libc() is None, reason="glibc's allocator only")

# What every script starts with: glibc's counters and a raw malloc, in a process given its mode as argv[1].
PREAMBLE = """
import ctypes, re, sys, threading
from kame import heap
class MallInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo
libc.malloc.restype = ctypes.c_void_p
mode = sys.argv[1]
"""


def printed(script: str, *modes: str) -> dict[str, str]:
    """What ``script`` (after the preamble) prints in a fresh interpreter, for each mode."""
    return {
        mode: subprocess.run(
            [sys.executable, "-c", PREAMBLE + script, mode], capture_output=True, text=True, check=True
        ).stdout.strip()
        for mode in modes
    }


def test_a_fixed_mmap_threshold_keeps_large_blocks_out_of_the_heap():
    """glibc raises its mmap threshold when a mapped block is freed, so the next block of that size comes
    from the heap (where it fragments it); after ``fix_mmap_threshold`` it is mapped again."""
    script = """
if mode == "fixed":
    assert heap.fix_mmap_threshold()
size = 4 << 20
libc.free(ctypes.c_void_p(libc.malloc(size)))  # a mapped block, freed: the threshold rises to 4 MiB
before = libc.mallinfo2().hblkhd
block = libc.malloc(size)
print(libc.mallinfo2().hblkhd - before >= size)
"""
    assert printed(script, "default", "fixed") == {"default": "False", "fixed": "True"}
    assert isinstance(heap.trim(), bool)


def test_the_server_keeps_at_most_two_malloc_arenas():
    """``kame serve`` limits glibc to two arenas (each thread's own arena fragments on its own); counted
    from glibc's own ``malloc_info`` report after eight threads allocated at once."""
    script = """
if mode == "limited":
    assert heap.limit_arenas(2)
libc.open_memstream.restype = ctypes.c_void_p
barrier = threading.Barrier(8)
def work():  # eight threads allocating at once: glibc gives each its own arena unless limited
    blocks = [libc.malloc(1000) for _ in range(200)]
    barrier.wait()
    for block in blocks:
        libc.free(ctypes.c_void_p(block))
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
text, size = ctypes.c_char_p(), ctypes.c_size_t()
stream = libc.open_memstream(ctypes.byref(text), ctypes.byref(size))
libc.malloc_info(0, ctypes.c_void_p(stream))
libc.fclose(ctypes.c_void_p(stream))
print(len(re.findall(rb"<heap nr=", text.value)))
"""
    counts = {mode: int(out) for mode, out in printed(script, "default", "limited").items()}
    assert counts["default"] > 2 and counts["limited"] <= 2, counts


def test_training_keeps_large_blocks_in_the_heap_after_they_are_freed():
    """CPU training's setting: a step's large tensors come from the heap and stay there when freed."""
    script = """
if mode == "training":
    assert heap.keep_blocks_in_heap()
size = 8 << 20  # a tiny LM's audio logits are about this size
start = libc.mallinfo2()
block = libc.malloc(size)
mapped = libc.mallinfo2().hblkhd - start.hblkhd >= size
libc.free(ctypes.c_void_p(block))
kept = libc.mallinfo2().arena - start.arena >= size
print(mapped, kept)
"""
    # glibc's default maps an 8 MiB block (and unmaps it when freed); the training setting carves it
    # from the heap and keeps the pages when it is freed, so the next step does not fault them in again
    assert printed(script, "default", "training") == {"default": "True False", "training": "False True"}
