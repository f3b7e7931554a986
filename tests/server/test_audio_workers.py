"""Reply audio encoded in worker processes (``--audio-workers``): real sphn Opus, real processes and,
end to end, a real server on the tiny front-end with Moshi-protocol clients."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import numpy as np
import pytest
import sphn
from test_server import running_server, talk

from kame.server.audio_workers import LocalEncoder, PooledEncoder, ReplyEncoderPool

FRAME = 1920


def _tone(hz: float, frames: int) -> np.ndarray:
    t = np.arange(frames * FRAME) / 24000
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _decode(pages: list[bytes]) -> np.ndarray:
    reader = sphn.OpusStreamReader(24000)
    parts = [reader.append_bytes(page) for page in pages]
    return np.concatenate([p for p in parts if p.size]) if any(p.size for p in parts) else np.zeros(0)


def _dominant_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / 24000)[np.argmax(spectrum)])


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_each_stream_is_its_own_ogg_opus_stream_across_workers():
    """Three sessions on two workers: every stream decodes to its own tone, as long as a local one."""
    pool = ReplyEncoderPool(2)
    pool.start()
    try:

        async def scenario():
            pages: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
            failures: list[str] = []
            encoders = [pool.open(pages[i].append, failures.append) for i in range(3)]
            assert all(isinstance(e, PooledEncoder) for e in encoders)
            assert {e.worker.index for e in encoders} == {0, 1}  # spread over both
            tones = [_tone(hz, 50) for hz in (300.0, 700.0, 1500.0)]
            for f in range(50):  # as the frame clock delivers: one frame of every session per step
                for encoder, tone in zip(encoders, tones, strict=True):
                    assert encoder.encode(tone[f * FRAME : (f + 1) * FRAME])
                await asyncio.sleep(0.005)
            local_pages: list[bytes] = []
            local = LocalEncoder(local_pages.append)
            for f in range(50):
                local.encode(tones[0][f * FRAME : (f + 1) * FRAME])
            expected = _decode(local_pages).size
            await _until(lambda: all(_decode(pages[i]).size >= expected for i in range(3)))
            for encoder in encoders:
                encoder.close()
            return pages, failures, expected

        pages, failures, expected = asyncio.run(scenario())
    finally:
        pool.stop()
    assert not failures and pool.dropped == 0
    for i, hz in enumerate((300.0, 700.0, 1500.0)):
        pcm = _decode(pages[i])
        assert pcm.size == expected
        assert abs(_dominant_hz(pcm[4800:]) - hz) < 30


def test_a_stalled_worker_drops_audio_instead_of_blocking_the_loop():
    """A worker that stops reading (SIGSTOP): the loop never blocks; beyond the backlog audio is
    dropped and counted, and once it reads again its streams go on."""
    pool = ReplyEncoderPool(1, max_backlog=4)
    pool.start()
    pid = pool.pids[0]
    try:

        async def scenario():
            pages: list[bytes] = []
            encoder = pool.open(pages.append, lambda why: None)
            os.kill(pid, signal.SIGSTOP)
            accepted = 0
            start = time.perf_counter()
            for _ in range(200):  # 16 s of audio; the pipe and the backlog hold far less
                accepted += encoder.encode(_tone(440.0, 1))
                await asyncio.sleep(0)
            spent = time.perf_counter() - start
            os.kill(pid, signal.SIGCONT)
            await _until(lambda: _decode(pages).size > 0)
            return accepted, spent

        accepted, spent = asyncio.run(scenario())
    finally:
        os.kill(pid, signal.SIGCONT)
        pool.stop()
    assert spent < 1.0  # nothing waited for the stopped worker
    assert accepted < 200 and pool.dropped >= 200 - accepted > 0


def test_sessions_are_served_through_audio_workers(tiny_checkpoint, question):
    async def scenario():
        async with running_server(tiny_checkpoint, max_sessions=2, audio_workers=2) as server:
            a, b = await asyncio.gather(talk(server.url, question), talk(server.url, question[:24000]))
            await asyncio.sleep(1.2)  # the supervisor samples CPU every second
            async with aiohttp.ClientSession() as http:
                metrics = await (await http.get(server.url + "/metrics")).text()
            return a, b, metrics, server.encoders

    a, b, metrics, pool = asyncio.run(scenario())
    for got, seconds in ((a, len(question) / 24000), (b, 1.0)):
        assert got.handshake and not got.errors and got.text
        assert got.audio_samples >= 0.6 * seconds * 24000
    assert pool.dropped == 0 and pool.alive == 0  # stopped with the server
    assert 'kame_cpu_seconds{process="audio"}' in metrics


@pytest.mark.parametrize("restarts", [False, True])
def test_a_dead_audio_worker_ends_its_sessions_and_new_ones_are_served(tiny_checkpoint, restarts):
    """Its sessions get a 0x05 error and close (an Ogg stream cannot move); the others and new ones
    are served: by the worker started again, or in the server process while none is up."""
    tone = _tone(220.0, 40)

    async def scenario():
        async with running_server(tiny_checkpoint, max_sessions=2, audio_workers=1) as server:
            pool = server.encoders
            pool.restart_delay_s = 0.1
            if restarts:
                pool._workers[0].started_at -= 60  # one that had lived long: started again
            victim = asyncio.create_task(
                talk(server.url, tone, linger=20.0, until=lambda got: bool(got.errors))
            )
            await _until(lambda: len(server.sessions) == 1)
            await asyncio.sleep(1.0)
            old = pool.pids[0]
            os.kill(old, signal.SIGKILL)
            hit = await asyncio.wait_for(victim, 15)
            if restarts:
                await _until(lambda: pool.alive == 1)
            after = await talk(server.url, tone[: 24000 * 2])
            ended = [s.labels for s in server.metrics.sessions_ended.collect()[0].samples]
            return hit, after, old, pool.pids, pool.restarts, ended

    hit, after, old, pids, restarted, ended = asyncio.run(scenario())
    assert hit.audio_samples > 0 and any("audio worker" in e for e in hit.errors)
    assert after.handshake and not after.errors and after.audio_samples >= 0.6 * 2 * 24000
    assert {"reason": "server error"} in ended
    if restarts:
        assert restarted == 1 and pids and pids[0] != old
    else:
        assert restarted == 0 and not pids  # died young: left down, the server encodes itself
