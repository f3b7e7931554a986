"""A long-running server's memory: nothing of a session outlives it (glibc's settings: tests/test_heap.py)."""

from __future__ import annotations

import asyncio
import gc
import re
import weakref

from test_server import running_server, talk

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
