"""The server offering both pipelines: a cascade session over Moshi's protocol beside a KAME session.

The cascade runs the embedded stack (Whisper tiny.en, SmolLM2, Piper) on a real spoken question sent as
Ogg Opus in 80 ms frames by a Moshi-protocol client, in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
import sphn
from aiohttp import web

from kame.audio.io import resample
from kame.audio.tts import create_tts
from kame.backend.llm import create_llm
from kame.backend.stt import create_stt
from kame.frontend.checkpoint import load_frontend
from kame.frontend.engine import FrontendEngine
from kame.runtime.cascade.chunks import speakable
from kame.runtime.cascade.pipeline import Cascade
from kame.runtime.scheduler import FrameStepper
from kame.server import protocol
from kame.server.app import KameServer, ServerConfig

FRAME = 1920


@contextlib.asynccontextmanager
async def both_pipelines(checkpoint: str, cascade: Cascade, **config) -> AsyncIterator[str]:
    engine = FrontendEngine(load_frontend(checkpoint), max_sessions=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = KameServer(
        FrameStepper(engine), None, ServerConfig(port=port, pipelines=("kame", "cascade"), **config),
        cascade=cascade,
    )  # fmt: skip
    runner = web.AppRunner(server.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        engine.close()


async def converse(url: str, pcm: np.ndarray, query: str, *, linger_until: str | None, max_s: float = 25.0):
    """Send ``pcm`` then silence in real time; returns (events, text pieces, audio samples, errors)."""
    events: list[dict] = []
    pieces: list[str] = []
    errors: list[str] = []
    audio = [0]
    writer, reader = sphn.OpusStreamWriter(24000), sphn.OpusStreamReader(24000)

    async def receive(ws):  # type: ignore[no-untyped-def]
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            kind, payload = protocol.decode_server_message(msg.data)
            if kind == protocol.KIND_AUDIO:
                audio[0] += reader.append_bytes(payload).size
            elif kind == protocol.KIND_TEXT:
                pieces.append(payload)
            elif kind == protocol.KIND_METADATA:
                events.append(payload)
            elif kind == protocol.KIND_ERROR:
                errors.append(payload)

    frames = [pcm[i : i + FRAME] for i in range(0, len(pcm) - FRAME + 1, FRAME)]
    async with aiohttp.ClientSession() as client, client.ws_connect(f"{url}/api/chat?{query}") as ws:
        receiver = asyncio.create_task(receive(ws))
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        while loop.time() - start < max_s and not ws.closed:
            frame = frames[sent] if sent < len(frames) else np.zeros(FRAME, np.float32)
            if sent >= len(frames) and (
                linger_until is None or any(e["type"] == linger_until for e in events)
            ):
                break
            if ogg := writer.append_pcm(frame):
                await ws.send_bytes(protocol.audio_message(ogg))
            sent += 1
            await asyncio.sleep(max(0.0, start + sent * 0.08 - loop.time()))
        await asyncio.sleep(0.3)
        await ws.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(receiver, 5)
    return events, pieces, audio[0], errors


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_server_serves_cascade_sessions_beside_kame(tiny_checkpoint):
    speech = create_tts("piper").synthesize("What is the capital of France?")
    question = np.concatenate(
        [np.zeros(12000, np.float32), resample(speech.audio, speech.sample_rate, 24000)]
    ).astype(np.float32)
    cascade = Cascade(create_stt("whisper"), create_llm("local"), create_tts("piper"))

    async def scenario():
        async with both_pipelines(tiny_checkpoint, cascade, max_cascade_sessions=1) as url:
            talking = asyncio.create_task(
                converse(url, question, "events=1&pipeline=cascade", linger_until="reply_end")
            )
            await asyncio.sleep(1.0)
            async with aiohttp.ClientSession() as http:
                during = await (await http.get(url + "/healthz")).json()
                full = await http.get(url + "/api/chat?pipeline=cascade")  # its one cascade slot is taken
                full_body = await full.json()
                unknown = await http.get(url + "/api/chat?pipeline=moshi")
                unknown_body = await unknown.json()
            kame = await converse(url, question[:24000], "events=1", linger_until=None)  # the default
            cascade_run = await talking
            async with aiohttp.ClientSession() as http:
                for _ in range(50):  # the server finishes closing the session after the client left
                    after = await (await http.get(url + "/healthz")).json()
                    if after["cascade_sessions"] == 0:
                        break
                    await asyncio.sleep(0.1)
                metrics = await (await http.get(url + "/metrics")).text()
        return (
            cascade_run,
            kame,
            during,
            (full.status, full_body),
            (unknown.status, unknown_body),
            metrics,
            after,
        )

    (events, pieces, samples, errors), kame, during, full, unknown, metrics, after = asyncio.run(scenario())
    assert not errors
    [session] = [e for e in events if e["type"] == "session"]
    assert session["pipeline"] == "cascade" and session["pipelines"] == ["kame", "cascade"]
    kinds = [e["type"] for e in events]
    for kind in ("final", "turn_end", "tts_first_audio", "reply_start", "reply_end"):
        assert kind in kinds, kind
    assert kinds.index("turn_end") < kinds.index("reply_start") < kinds.index("reply_end")
    [start] = [e for e in events if e["type"] == "reply_start"]
    [end] = [e for e in events if e["type"] == "reply_end"]
    assert end["reason"] == "done" and 0 < start["latency"] < 10
    said = [e["text"] for e in events if e["type"] == "assistant"]
    assert said and "".join(pieces).split() == said == end["text"].split()
    reply_text = [e["text"] for e in events if e["type"] == "reply_text"]
    spoken = (
        [t for t in speakable(reply_text[-1]).split() if any(ch.isalnum() for ch in t)] if reply_text else []
    )
    assert spoken and " ".join(spoken) == end["text"]  # the LLM's text as it streamed, all of it played
    assert samples >= 0.8 * (end["t"] * 24000)  # one 80 ms frame per tick, reply or silence
    metrics_events = [e for e in events if e["type"] == "metrics"]
    assert metrics_events and metrics_events[-1]["pipeline"] == "cascade"

    kame_events, _, kame_samples, kame_errors = kame
    assert not kame_errors and kame_samples > 0
    assert [e["pipeline"] for e in kame_events if e["type"] == "session"] == ["kame"]

    assert during["pipelines"] == ["kame", "cascade"] and during["cascade_sessions"] == 1
    assert during["cascade_capacity"] == 1 and after["cascade_sessions"] == 0
    assert full[0] == 503 and "cascade sessions" in full[1]["error"]
    assert unknown[0] == 400 and "kame, cascade" in unknown[1]["error"]
    assert "kame_cascade_response_latency_seconds_count 1.0" in metrics
    assert 'kame_cascade_stage_seconds_count{stage="llm_ttft"} 1.0' in metrics
    assert 'kame_cascade_replies_total{reason="done"} 1.0' in metrics


def test_a_server_without_what_a_pipeline_needs_is_refused():
    with pytest.raises(ValueError, match="needs a Cascade"):
        KameServer(None, None, ServerConfig(pipelines=("cascade",)))
    with pytest.raises(ValueError, match="frame clock"):
        KameServer(None, None, ServerConfig(pipelines=("kame",)))
    with pytest.raises(ValueError, match="kame and/or cascade"):
        ServerConfig(pipelines=("moshi",))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_cascade_sessions_outlive_a_front_end_restart(tiny_checkpoint):
    from kame.runtime.scheduler import FrontendProcessSpec, ProcessStepper

    tone = (0.1 * np.sin(np.arange(24000 * 5) * 0.05)).astype(np.float32)
    cascade = Cascade(create_stt("whisper"), create_llm("local"), create_tts("piper"))

    async def scenario():
        stepper = ProcessStepper(FrontendProcessSpec(frontend=tiny_checkpoint, max_sessions=1))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        config = ServerConfig(port=port, pipelines=("kame", "cascade"), restart_backoff_s=1.0)
        server = KameServer(stepper, None, config, cascade=cascade)
        runner = web.AppRunner(server.app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        try:
            talking = asyncio.create_task(converse(url, tone, "events=1&pipeline=cascade", linger_until=None))
            await asyncio.sleep(1.5)
            stepper._process.kill()  # the front-end dies; the cascade never used it
            await asyncio.sleep(0.5)
            async with aiohttp.ClientSession() as http:
                during = await (await http.get(url + "/healthz")).json()
            joined = await converse(url, tone[:24000], "events=1&pipeline=cascade", linger_until=None)
            first = await talking
        finally:
            await runner.cleanup()
        return first, joined, during

    (events, _, samples, errors), joined, during = asyncio.run(scenario())
    assert during["status"] == "restarting"
    assert not errors and samples >= 0.8 * 5 * 24000  # one frame per tick all along, no 0x05 error
    assert [e["pipeline"] for e in events if e["type"] == "session"] == ["cascade"]
    assert not joined[3] and joined[2] > 0  # a new cascade session starts while the front-end restarts
