"""CPU training's heap setting: a step's large tensors come from the heap and stay there when freed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kame import heap

SCRIPT = """
import ctypes, sys
from kame import heap
class MallInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo
libc.malloc.restype = ctypes.c_void_p
if sys.argv[1] == "training":
    assert heap.keep_blocks_in_heap()
size = 8 << 20  # a tiny LM's audio logits are about this size
start = libc.mallinfo2()
block = libc.malloc(size)
mapped = libc.mallinfo2().hblkhd - start.hblkhd >= size
libc.free(ctypes.c_void_p(block))
kept = libc.mallinfo2().arena - start.arena >= size
print(mapped, kept)
"""


@pytest.mark.skipif(heap._libc() is None, reason="glibc's allocator only")
def test_training_keeps_large_blocks_in_the_heap_after_they_are_freed():
    seen = {
        mode: subprocess.run(
            [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
        ).stdout.strip()
        for mode in ("default", "training")
    }
    # glibc's default maps an 8 MiB block (and unmaps it when freed); the training setting carves it
    # from the heap and keeps the pages when it is freed, so the next step does not fault them in again
    assert seen == {"default": "True False", "training": "False True"}
