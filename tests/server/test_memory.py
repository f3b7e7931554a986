"""A long-running server's memory: nothing of a session outlives it, and glibc's heap stays tunable."""

from __future__ import annotations

import asyncio
import gc
import re
import subprocess
import sys
import weakref

import pytest
from test_server import running_server, talk

from kame import heap
from kame.runtime.backend import Backend, BackendSpec


def test_a_closed_session_leaves_nothing_behind(tiny_checkpoint, question):
    """Sessions, their timelines, STT streams, oracle engines, outputs and tasks are gone once closed."""
    refs: list[weakref.ref] = []
    seen: set[str] = set()

    async def watch(server) -> None:
        while True:
            for sid, session in list(server.sessions.items()):
                if sid not in seen and session.back is not None:
                    seen.add(sid)
                    _, output = server._sockets[sid]
                    back = session.back
                    for obj in (session, session.timeline, back, back.stream, back.engine, output):
                        refs.append(weakref.ref(obj))
            await asyncio.sleep(0.05)

    async def scenario():
        backend = Backend.from_spec(BackendSpec())
        async with running_server(tiny_checkpoint, backend=backend, max_sessions=2) as server:
            watcher = asyncio.create_task(watch(server))
            for _ in range(2):
                got = await talk(server.url, question[: len(question) // 2])
                assert got.handshake and not got.errors
            await asyncio.sleep(0.5)  # the last session's close finishes on the server's side
            watcher.cancel()
            left = (dict(server.sessions), dict(server._sockets), dict(server._pipeline_of))
            names = (task.get_name() for task in asyncio.all_tasks())
            tasks = sorted(name for name in names if re.fullmatch(r"kame-\w+-s\d+", name))  # per session
            trimmed = server._last_trim
            return left, tasks, trimmed

    left, tasks, trimmed = asyncio.run(scenario())
    gc.collect()
    assert len(seen) == 2 and len(refs) == 12
    assert left == ({}, {}, {})
    assert tasks == []
    assert [ref for ref in refs if ref() is not None] == []
    assert trimmed > float("-inf")  # a session's end gave free heap pages back


@pytest.mark.skipif(heap._libc() is None, reason="glibc's allocator only")
def test_a_fixed_mmap_threshold_keeps_large_blocks_out_of_the_heap():
    """glibc raises its mmap threshold when a mapped block is freed, so the next block of that size comes
    from the heap (where it fragments it); after ``fix_mmap_threshold`` it is mapped again."""
    script = """
import ctypes, sys
from kame import heap
class MallInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo
libc.malloc.restype = ctypes.c_void_p
if sys.argv[1] == "fixed":
    assert heap.fix_mmap_threshold()
size = 4 << 20
libc.free(ctypes.c_void_p(libc.malloc(size)))  # a mapped block, freed: the threshold rises to 4 MiB
before = libc.mallinfo2().hblkhd
block = libc.malloc(size)
print(libc.mallinfo2().hblkhd - before >= size)
"""
    mapped = {
        mode: subprocess.run(
            [sys.executable, "-c", script, mode], capture_output=True, text=True, check=True
        ).stdout.strip()
        for mode in ("default", "fixed")
    }
    assert mapped == {"default": "False", "fixed": "True"}
    assert isinstance(heap.trim(), bool)


ARENAS = """
import ctypes, re, sys, threading
from kame import heap
libc = ctypes.CDLL(None)
if sys.argv[1] == "limited":
    assert heap.limit_arenas(2)
libc.malloc.restype = ctypes.c_void_p
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


@pytest.mark.skipif(heap._libc() is None, reason="glibc's allocator only")
def test_the_server_keeps_at_most_two_malloc_arenas():
    """``kame serve`` limits glibc to two arenas (each thread's own arena fragments on its own); counted
    from glibc's own ``malloc_info`` report after eight threads allocated at once."""
    counts = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, check=True
            ).stdout
        )
        for mode in ("default", "limited")
    }
    assert counts["default"] > 2 and counts["limited"] <= 2, counts
