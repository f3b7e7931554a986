"""The server's life: a dead front-end process restarted, a thread clock that fails ending the server,
a failing LLM that never touches the front-end, and ``kame serve`` itself (generated token, SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web
from test_access import upgrade
from test_server import talk

from kame.frontend.checkpoint import load_frontend
from kame.frontend.engine import FrontendEngine
from kame.runtime.backend import Backend, BackendSpec
from kame.runtime.scheduler import FrameStepper, FrontendProcessSpec, ProcessStepper
from kame.server.app import KameServer, ServerConfig

TONE = (0.1 * np.sin(np.arange(24000 * 6) * 0.05)).astype(np.float32)


async def _health(http: aiohttp.ClientSession, url: str) -> dict:
    return await (await http.get(url + "/healthz")).json()


async def _wait_status(http, url: str, status: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = await _health(http, url)
        if health["status"] == status or time.monotonic() > deadline:
            return health
        await asyncio.sleep(0.2)


def test_a_killed_frontend_process_comes_back_and_serves(tiny_checkpoint):
    async def scenario():
        stepper = ProcessStepper(FrontendProcessSpec(frontend=tiny_checkpoint, max_sessions=2))
        config = ServerConfig(restart_backoff_s=0.1, max_failed_starts=2)
        server = KameServer(stepper, None, config)
        runner = web.AppRunner(server.app())
        await runner.setup()
        port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        seen: dict = {}
        try:
            async with aiohttp.ClientSession() as http:
                live = asyncio.create_task(talk(url, TONE))
                await asyncio.sleep(1.5)
                stepper._process.kill()  # the front-end dies (a GPU fault, the OOM killer)
                got = await live
                seen["during"] = await _health(http, url)
                seen["refused"] = await upgrade(http, url)
                seen["back"] = await _wait_status(http, url, "ok", 90)
                seen["served"] = await talk(url, TONE[: 24000 * 2])
                seen["metrics"] = await (await http.get(url + "/metrics")).text()
                # Now it cannot start any more: after two failed starts in a row it gives up, and says why.
                stepper.spec.frontend = "/nonexistent/checkpoint"
                stepper._process.kill()
                seen["gave up"] = await _wait_status(http, url, "error", 90)
                seen["gave up status"] = (await http.get(url + "/healthz")).status
        finally:
            await runner.cleanup()
        return got, seen

    got, seen = asyncio.run(scenario())
    assert got.audio_samples > 0 and got.errors and "front-end stopped" in got.errors[0]
    assert seen["during"]["status"] == "restarting" and seen["during"]["restarts"] == 0
    assert seen["refused"] == 503  # no new session on a front-end that is not up
    back = seen["back"]
    assert back["status"] == "ok" and back["restarts"] == 1, back
    served = seen["served"]
    assert served.handshake and served.audio_samples > 24000 and not served.errors
    assert "kame_frontend_restarts_total 1.0" in seen["metrics"]
    gave_up = seen["gave up"]
    assert gave_up["status"] == "error" and seen["gave up status"] == 503
    assert "failed to start 2 times in a row" in gave_up["error"] and "nonexistent" in gave_up["error"]


def test_a_failing_thread_clock_ends_the_server(tiny_checkpoint):
    engine = FrontendEngine(load_frontend(tiny_checkpoint), max_sessions=2)
    stepper = FrameStepper(engine)
    stepper.clock.max_failed_steps = 5
    steps = 0
    real_step = engine.step

    def failing_step(inputs):  # the device fails after a few frames
        nonlocal steps
        steps += 1
        if steps > 8:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_step(inputs)

    engine.step = failing_step  # type: ignore[method-assign]

    async def scenario():
        server = KameServer(stepper, None, ServerConfig())
        runner = web.AppRunner(server.app())
        await runner.setup()
        port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        try:
            got = await talk(url, TONE[: 24000 * 3])
            await asyncio.wait_for(server.fatal_event.wait(), 10)
            async with aiohttp.ClientSession() as http:
                health = await (await http.get(url + "/healthz")).json()
        finally:
            await runner.cleanup()
            engine.close()
        return got, health, server.fatal

    got, health, fatal = asyncio.run(scenario())
    assert got.errors and "front-end stopped" in got.errors[0]
    assert health["status"] == "error" and "illegal memory access" in health["error"]
    assert "cannot be restarted" in fatal


def test_a_failing_llm_never_takes_the_frontend_down(tiny_checkpoint, question):
    """An OpenAI-compatible LLM server (on loopback) that dies mid-answer: the session keeps talking,
    its timeline records the error, and the next session is served as if nothing happened."""

    async def broken_llm(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        delta = {"index": 0, "delta": {"content": "Paris is"}, "finish_reason": None}
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [delta]}
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await asyncio.sleep(0.2)
        request.transport.close()  # dies mid-stream
        return response

    async def scenario():
        llm_app = web.Application()
        llm_app.router.add_post("/v1/chat/completions", broken_llm)
        llm_runner = web.AppRunner(llm_app)
        await llm_runner.setup()
        llm_port = _free_port()
        await web.TCPSite(llm_runner, "127.0.0.1", llm_port).start()
        backend = Backend.from_spec(BackendSpec(llm=f"openai:broken@http://127.0.0.1:{llm_port}/v1"))
        engine = FrontendEngine(load_frontend(tiny_checkpoint), max_sessions=2)
        server = KameServer(FrameStepper(engine), backend, ServerConfig())
        runner = web.AppRunner(server.app())
        await runner.setup()
        port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        try:
            first = await talk(url, question, linger=6.0, until=lambda got: bool(got.of_type("error")))
            second = await talk(url, question[: 24000 * 2])
            async with aiohttp.ClientSession() as http:
                health = await (await http.get(url + "/healthz")).json()
        finally:
            await runner.cleanup()
            await llm_runner.cleanup()
            engine.close()
        return first, second, health

    first, second, health = asyncio.run(scenario())
    assert first.of_type("error") and "broke off" in first.of_type("error")[0]["text"]
    assert not first.errors and first.audio_samples > 2 * 24000  # the session went on talking
    assert second.handshake and second.audio_samples > 24000 and not second.errors
    assert health["status"] == "ok" and health["restarts"] == 0


def test_kame_serve_off_loopback_makes_a_token_and_drains_on_sigterm(tiny_checkpoint, tmp_path):
    """``kame serve --host 0.0.0.0`` prints a generated token's URL and needs it; SIGTERM tells the live
    session, ends it within the drain time with its timeline whole, and the process exits 0."""
    port = _free_port()
    timelines = tmp_path / "timelines"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_TORCH_COMPILE": "1"}
    env.pop("KAME_AUTH_TOKEN", None)
    command = [
        sys.executable, "-m", "kame", "serve", "--frontend", tiny_checkpoint, "--no-backend",
        "--host", "0.0.0.0", "--port", str(port), "--drain-timeout", "1.5", "--timeline-dir", str(timelines),
    ]  # fmt: skip
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        token = None
        deadline = time.monotonic() + 120
        while token is None:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            found = re.search(r"\?token=([0-9a-f]{48})", log_path.read_text())
            token = found.group(1) if found else None
            time.sleep(0.3)
        url = f"http://127.0.0.1:{port}"

        async def scenario():
            async with aiohttp.ClientSession() as http:
                anonymous = await upgrade(http, url)
                metrics = (await http.get(url + "/metrics")).status  # not on loopback: needs the token
                health = (await http.get(url + "/healthz")).status
                live = asyncio.create_task(talk(f"{url}", TONE, linger=10, token=token))
                await asyncio.sleep(2.0)
                sent_at = time.monotonic()
                process.send_signal(signal.SIGTERM)
                got = await live
                return anonymous, metrics, health, got, time.monotonic() - sent_at

        anonymous, metrics, health, got, took = asyncio.run(scenario())
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = log_path.read_text()
    assert anonymous == 401 and metrics == 401 and health == 200
    assert got.handshake and got.audio_samples > 24000
    assert got.of_type("shutdown") and got.of_type("shutdown")[0]["drain_s"] == 1.5
    assert got.errors and "shutting down" in got.errors[0]
    assert took < 6.0, f"the drain took {took:.1f} s"
    assert code == 0, log
    assert log.count(token) == 1, "the token must appear once: in the URL printed at start-up"
    (timeline,) = timelines.glob("*.jsonl")
    lines = Path(timeline).read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line whole
    assert events[-1]["type"] == "session_end" and events[-1]["reason"] == "server shutdown"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
