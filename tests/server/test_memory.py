"""A long-running server's memory: nothing of a session outlives it (glibc's settings: tests/test_heap.py)."""

from __future__ import annotations

import asyncio
import gc
import re
import weakref

from test_server import running_server, talk

from kame.runtime.backend import Backend, BackendSpec


async def _watch(server, refs: list[weakref.ref], seen: set[str]) -> None:
    """Weak references to each new session's parts: itself, timeline, back-end, STT, engine, output
    (kept in no local variable between polls, so that the watch itself holds no session)."""
    while True:
        for sid in [sid for sid, s in server.sessions.items() if sid not in seen and s.back is not None]:
            seen.add(sid)
            refs.extend(weakref.ref(obj) for obj in _parts(server, sid))
        await asyncio.sleep(0.05)


def _parts(server, sid: str) -> tuple:
    session = server.sessions[sid]
    back = session.back
    return (session, session.timeline, back, back.stream, back.engine, server._sockets[sid][1])


def test_a_closed_session_leaves_nothing_behind(tiny_checkpoint, question):
    """Sessions, their timelines, STT streams, oracle engines, outputs and tasks are gone once closed."""
    refs: list[weakref.ref] = []
    seen: set[str] = set()

    async def scenario():
        backend = Backend.from_spec(BackendSpec())
        async with running_server(tiny_checkpoint, backend=backend, max_sessions=2) as server:
            watcher = asyncio.create_task(_watch(server, refs, seen))
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


def test_kame_serve_frees_a_closed_session_when_it_ends(tiny_checkpoint, question):
    """A closed session is cyclic garbage (cancelled tasks keep tracebacks that hold it). With
    ``collect_garbage`` (kame serve's setting) the server collects when a session ends; Python's own
    collector is off here, so nothing else can free it."""
    refs: list[weakref.ref] = []
    seen: set[str] = set()

    async def scenario():
        backend = Backend.from_spec(BackendSpec(stt="pocketsphinx"))
        async with running_server(
            tiny_checkpoint, backend=backend, max_sessions=2, collect_garbage=True
        ) as server:
            watcher = asyncio.create_task(_watch(server, refs, seen))
            gc.disable()
            for _ in range(2):
                got = await talk(server.url, question[: len(question) // 2])
                assert got.handshake and not got.errors
            await asyncio.sleep(1.5)  # the collection comes GC_DELAY_S after a session's end
            watcher.cancel()
            alive = [ref for ref in refs if ref() is not None]
            collections = server.metrics.gc_seconds.collect()[0].samples
            return alive, next(s.value for s in collections if s.name.endswith("_count"))

    try:
        alive, collections = asyncio.run(scenario())
    finally:
        gc.unfreeze()
        gc.enable()
    assert len(seen) == 2 and len(refs) == 12
    assert alive == []
    assert collections == 2
