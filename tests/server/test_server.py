"""The voice server through real WebSocket clients speaking Moshi's protocol (Ogg Opus over /api/chat)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import pytest
import sphn
from aiohttp import web

from kame.frontend.checkpoint import load_frontend
from kame.frontend.engine import FrontendEngine
from kame.runtime.backend import Backend, BackendSpec
from kame.runtime.scheduler import FrameStepper
from kame.server import protocol
from kame.server.app import KameServer, ServerConfig

FRAME = 1920


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def running_server(
    checkpoint: str, *, backend: Backend | None = None, **config
) -> AsyncIterator[KameServer]:
    engine = FrontendEngine(load_frontend(checkpoint), max_sessions=config.pop("max_sessions", 2))
    port = _free_port()
    server = KameServer(FrameStepper(engine), backend, ServerConfig(port=port, **config))
    runner = web.AppRunner(server.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    server.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        await runner.cleanup()
        engine.close()


@dataclass
class Received:
    handshake: bool = False
    audio_samples: int = 0
    text: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def of_type(self, *types: str) -> list[dict]:
        return [e for e in self.events if e["type"] in types]


async def _receive(ws: aiohttp.ClientWebSocketResponse, got: Received) -> None:
    reader = sphn.OpusStreamReader(24000)
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.BINARY:
            break
        kind, payload = protocol.decode_server_message(msg.data)
        if kind == protocol.KIND_HANDSHAKE:
            got.handshake = True
        elif kind == protocol.KIND_AUDIO:
            got.audio_samples += reader.append_bytes(payload).size
        elif kind == protocol.KIND_TEXT:
            got.text.append(payload)
        elif kind == protocol.KIND_METADATA:
            got.events.append(payload)
        elif kind == protocol.KIND_ERROR:
            got.errors.append(payload)


async def talk(
    url: str,
    pcm: np.ndarray,
    *,
    events: bool = True,
    pace: float = 0.08,
    linger: float = 0.0,
    until: Callable[[Received], bool] | None = None,
    token: str | None = None,
) -> Received:
    """A Moshi-protocol client: sends ``pcm`` (24 kHz) as Ogg Opus in 80 ms frames, then silence (as a
    client does while its user listens) for ``linger`` seconds or until ``until(received)``."""
    got = Received()
    writer = sphn.OpusStreamWriter(24000)
    silence = np.zeros(FRAME, np.float32)
    frames = [pcm[i : i + FRAME] for i in range(0, len(pcm) - FRAME + 1, FRAME)]
    query = [q for q in ("events=1" if events else "", f"token={token}" if token else "") if q]
    endpoint = f"{url}/api/chat" + ("?" + "&".join(query) if query else "")
    async with aiohttp.ClientSession() as client, client.ws_connect(endpoint) as ws:
        receiver = asyncio.create_task(_receive(ws, got))
        lingered = 0.0
        while frames or (lingered < linger and not (until and until(got))):
            ogg = writer.append_pcm(frames.pop(0) if frames else silence)
            if ws.closed:
                break  # the server ended the session (it says why in got.errors)
            if ogg:
                try:
                    await ws.send_bytes(protocol.audio_message(ogg))
                except ConnectionResetError:
                    break
            await asyncio.sleep(pace)
            if not frames:
                lingered += pace
        await ws.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(receiver, 5)
    return got


def test_concurrent_sessions_with_the_embedded_backend(tiny_checkpoint, question):
    async def scenario():
        backend = Backend.from_spec(BackendSpec())
        async with running_server(tiny_checkpoint, backend=backend, max_sessions=2) as server:
            a, b = await asyncio.gather(
                talk(server.url, question, linger=20.0, until=lambda got: bool(got.of_type("oracle_end"))),
                talk(server.url, question[: len(question) // 2]),
            )
            async with aiohttp.ClientSession() as http:
                health = await (await http.get(server.url + "/healthz")).json()
                metrics = await (await http.get(server.url + "/metrics")).text()
        return a, b, health, metrics

    a, b, health, metrics = asyncio.run(scenario())
    for got, seconds in ((a, len(question) / 24000), (b, len(question) / 48000)):
        assert got.handshake and not got.errors
        assert got.audio_samples >= 0.6 * seconds * 24000  # the reply streams while the user talks
        assert got.text  # inner-monologue pieces (Moshi's 0x02)
        assert got.of_type("session") and got.of_type("metrics")
    transcript = " ".join(e["text"] for e in a.of_type("partial", "final")).lower()
    assert "capital" in transcript and "france" in transcript
    assert a.of_type("oracle_reset") and a.of_type("oracle_append")
    assert a.of_type("assistant")
    assert health["status"] == "ok" and health["capacity"] == 2
    assert "kame_sessions_total 2.0" in metrics
    assert "kame_step_seconds_count" in metrics and "kame_llm_ttft_seconds_count" in metrics


def test_sessions_join_and_leave_mid_stream(tiny_checkpoint):
    tone = (0.1 * np.sin(np.arange(24000 * 3) * 0.05)).astype(np.float32)

    async def scenario():
        async with running_server(tiny_checkpoint, max_sessions=3) as server:
            long = asyncio.create_task(talk(server.url, tone))
            await asyncio.sleep(0.6)
            short = await talk(server.url, tone[: 24000 // 2])  # joins and leaves while `long` runs
            await asyncio.sleep(0.3)
            async with aiohttp.ClientSession() as http:
                during = await (await http.get(server.url + "/healthz")).json()
            first = await long
            await asyncio.sleep(0.3)
            async with aiohttp.ClientSession() as http:
                after = await (await http.get(server.url + "/healthz")).json()
        return first, short, during, after

    first, short, during, after = asyncio.run(scenario())
    assert first.audio_samples >= 2.0 * 24000 and short.audio_samples > 0
    assert during["sessions"] == 1 and after["sessions"] == 0


async def _raw_session(url: str, messages: list, *, wait: float = 3.0, text_frame: bool = False) -> Received:
    got = Received()
    async with aiohttp.ClientSession() as client, client.ws_connect(f"{url}/api/chat?events=1") as ws:
        receiver = asyncio.create_task(_receive(ws, got))
        await asyncio.sleep(0.3)
        for message in messages:
            if isinstance(message, str):
                await ws.send_str(message)
            else:
                await ws.send_bytes(message)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(receiver, wait)
        got.closed = ws.closed  # type: ignore[attr-defined]
    return got


def test_bad_clients_end_their_own_session_only(tiny_checkpoint):
    tone = (0.1 * np.sin(np.arange(24000 * 4) * 0.05)).astype(np.float32)

    async def scenario():
        async with running_server(tiny_checkpoint, max_sessions=6, max_message_bytes=4096) as server:
            good = asyncio.create_task(talk(server.url, tone))
            results = await asyncio.gather(
                _raw_session(server.url, [b"\x09hello"]),
                _raw_session(server.url, [protocol.audio_message(b"definitely not ogg opus data")]),
                _raw_session(server.url, [protocol.audio_message(bytes(8000))]),
                _raw_session(server.url, ["a text frame"]),
                _raw_session(server.url, [b""]),
            )
            good_result = await good
            async with aiohttp.ClientSession() as http:
                health = await (await http.get(server.url + "/healthz")).json()
        return results, good_result, health

    (unknown, garbage, oversized, text, empty), good, health = asyncio.run(scenario())
    assert unknown.errors and "unknown message kind 0x09" in unknown.errors[0]
    assert garbage.errors and "not Ogg Opus" in garbage.errors[0]
    assert oversized.closed and (not oversized.errors or "limit" in oversized.errors[0])
    assert text.errors and "binary" in text.errors[0]
    assert empty.errors and "empty message" in empty.errors[0]
    assert good.audio_samples >= 3.0 * 24000 and not good.errors  # undisturbed
    assert health["sessions"] == 0


def test_idle_and_vanishing_clients_are_cleaned_up(tiny_checkpoint):
    async def scenario():
        async with running_server(tiny_checkpoint, idle_timeout_s=1.0) as server:
            idle = await _raw_session(server.url, [], wait=4.0)
            # A client that disconnects in the middle of an Ogg page.
            writer = sphn.OpusStreamWriter(24000)
            page = writer.append_pcm(np.zeros(FRAME * 3, np.float32))
            async with aiohttp.ClientSession() as client:
                ws = await client.ws_connect(f"{server.url}/api/chat")
                await ws.send_bytes(protocol.audio_message(page[: len(page) // 2]))
                await ws.close()
            await asyncio.sleep(0.5)
            async with aiohttp.ClientSession() as http:
                health = await (await http.get(server.url + "/healthz")).json()
        return idle, health

    idle, health = asyncio.run(scenario())
    assert idle.errors and "no message for 1 s" in idle.errors[0]
    assert health["sessions"] == 0


def test_full_server_refuses_or_queues(tiny_checkpoint):
    tone = (0.1 * np.sin(np.arange(int(24000 * 1.5)) * 0.05)).astype(np.float32)

    async def refuse():
        async with running_server(tiny_checkpoint, max_sessions=1) as server:
            first = asyncio.create_task(talk(server.url, tone))
            await asyncio.sleep(0.5)
            async with aiohttp.ClientSession() as client:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await client.ws_connect(f"{server.url}/api/chat")
                response = await client.get(f"{server.url}/api/chat")  # plain GET shows the body
                body = await response.json()
            await first
        return refused.value.status, body

    status, body = asyncio.run(refuse())
    assert status == 503 and "server full" in body["error"]

    async def queue():
        async with running_server(tiny_checkpoint, max_sessions=1, when_full="queue", queue_size=1) as server:
            first = asyncio.create_task(talk(server.url, tone))
            await asyncio.sleep(0.5)
            second = asyncio.create_task(talk(server.url, tone))
            await asyncio.sleep(0.3)
            async with aiohttp.ClientSession() as client:
                with pytest.raises(aiohttp.WSServerHandshakeError) as third:
                    await client.ws_connect(f"{server.url}/api/chat")
            return await first, await second, third.value.status

    first, second, third_status = asyncio.run(queue())
    assert first.handshake and second.handshake
    assert second.of_type("queued") and second.of_type("queued")[0]["position"] == 1
    assert second.audio_samples > 0
    assert third_status == 503


def test_moshi_client_without_events_gets_only_moshi_messages(tiny_checkpoint):
    tone = (0.1 * np.sin(np.arange(24000) * 0.05)).astype(np.float32)

    async def scenario():
        async with running_server(tiny_checkpoint) as server:
            return await talk(server.url, tone, events=False)

    got = asyncio.run(scenario())
    assert got.handshake and got.audio_samples > 0 and not got.events


def test_metrics_and_health_endpoints(tiny_checkpoint):
    async def scenario():
        async with running_server(tiny_checkpoint) as server:
            await talk(server.url, np.zeros(24000, np.float32))
            async with aiohttp.ClientSession() as http:
                metrics = await (await http.get(server.url + "/metrics")).text()
                health = await (await http.get(server.url + "/healthz")).json()
        return metrics, health

    metrics, health = asyncio.run(scenario())
    for name in (
        "kame_sessions_active",
        "kame_step_seconds_bucket",
        "kame_late_frames_total",
        "kame_oracle_lag_seconds",
    ):
        assert name in metrics
    assert health["steps"] > 5 and time.time() > 0


def test_frame_clock_in_a_child_process(tiny_checkpoint, question):
    """The default server set-up: the front-end lives in its own process; sessions don't notice."""
    from kame.runtime.scheduler import FrontendProcessSpec, ProcessStepper

    async def scenario():
        stepper = ProcessStepper(FrontendProcessSpec(frontend=tiny_checkpoint, max_sessions=2))
        port = _free_port()
        server = KameServer(stepper, Backend.from_spec(BackendSpec()), ServerConfig(port=port))
        runner = web.AppRunner(server.app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        try:
            a, b = await asyncio.gather(
                talk(
                    url,
                    question,
                    linger=20.0,
                    until=lambda got: bool(got.of_type("oracle_applied", "oracle_end")),
                ),
                talk(url, question[: len(question) // 3]),
            )
            async with aiohttp.ClientSession() as http:
                health = await (await http.get(url + "/healthz")).json()
        finally:
            await runner.cleanup()
        return a, b, health, stepper

    a, b, health, stepper = asyncio.run(scenario())
    assert a.handshake and b.handshake and not a.errors and not b.errors
    assert a.audio_samples > 24000 and b.audio_samples > 0
    assert a.of_type("oracle_end") and a.of_type("final")
    assert health["steps"] > 20 and health["sessions"] == 0
    assert stepper._process is not None and not stepper._process.is_alive()  # stopped with the server


def test_audio_faster_than_real_time_is_dropped_not_passed_on(tiny_checkpoint):
    """A client that sends 6 s of audio at once: beyond 1 s ahead of real time it is dropped (the shared
    STT never works for it), counted, and the session goes on."""
    tone = (0.1 * np.sin(np.arange(24000 * 6) * 0.05)).astype(np.float32)

    async def scenario():
        async with running_server(tiny_checkpoint) as server:
            got = await talk(server.url, tone, pace=0.002)
            async with aiohttp.ClientSession() as http:
                metrics = await (await http.get(server.url + "/metrics")).text()
        return got, metrics

    got, metrics = asyncio.run(scenario())
    dropped = float(next(line.split()[1] for line in metrics.splitlines()
                         if line.startswith("kame_input_too_fast_seconds_total ")))  # fmt: skip
    assert got.handshake and not got.errors
    assert 3.0 < dropped < 6.0
