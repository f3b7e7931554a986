"""Load test: N concurrent Moshi-protocol clients against a kame server, for growing N.

The server runs in this process (a real aiohttp server on 127.0.0.1, the real frame-clock thread and
back-end) and the clients are real WebSocket clients sending Ogg Opus at the real-time pace, looping a
spoken question followed by silence. For each N it reports the front-end step time, the share of
session-frames whose step missed its 80 ms deadline, the oracle lag (back-end event -> frame boundary),
the LLM time to first token, input underruns and the rate at which clients receive reply audio.

    python bench/serve_load.py --frontend tiny --clients 1 2 3 --seconds 20
    python bench/serve_load.py --frontend random:moshi-7b --device cuda --backend none --clients 1 8 16 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp
import numpy as np
import sphn
import torch
from aiohttp import web

from kame.audio.io import load_audio
from kame.events import LLMFirstToken, OracleApplied, is_a
from kame.frames import FRAME_SIZE
from kame.frontend.checkpoint import load_frontend
from kame.frontend.engine import FrontendEngine
from kame.runtime.backend import Backend, BackendSpec
from kame.runtime.scheduler import FrameStepper, FrontendProcessSpec, ProcessStepper, warm_up
from kame.server import protocol
from kame.server.app import KameServer, ServerConfig


def speech_loop() -> np.ndarray:
    """A spoken question then 2.5 s of silence (espeak-ng), or a tone where espeak-ng is missing."""
    if shutil.which("espeak-ng"):
        with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
            text = "Could you tell me what the tallest mountain in Europe is?"
            subprocess.run(["espeak-ng", "-s", "150", "-w", wav.name, text], check=True)
            speech = load_audio(wav.name)
    else:
        t = np.arange(int(2.5 * 24000)) / 24000
        speech = (0.2 * np.sin(2 * np.pi * (200 + 100 * np.sin(3 * t)) * t)).astype(np.float32)
    return np.concatenate([speech, np.zeros(int(2.5 * 24000), np.float32)])


def encode_loop(audio: np.ndarray, seconds: float) -> list[bytes]:
    """The Ogg Opus a client sends, frame by frame, for ``seconds``: encoded once, before the clock
    starts, so that the clients' own Opus work cannot be what limits the server."""
    writer = sphn.OpusStreamWriter(24000)
    frames = len(audio) // FRAME_SIZE
    pages = []
    for i in range(int(seconds / 0.08) + 1):
        index = i % frames
        pages.append(writer.append_pcm(audio[index * FRAME_SIZE : (index + 1) * FRAME_SIZE]))
    return pages


def last_granule_s(data: bytes) -> float | None:
    """Seconds of audio up to the last Ogg page in ``data`` (its granule position, 48 kHz): how much
    reply audio arrived, read from page headers instead of decoding."""
    at = data.rfind(b"OggS")
    if at < 0 or len(data) < at + 14:
        return None
    granule = int.from_bytes(data[at + 6 : at + 14], "little", signed=True)
    return granule / 48000 if granule >= 0 else None


async def client(url: str, pages: list[bytes], seconds: float, start_delay: float) -> dict:
    received_bytes = 0
    reply_s = 0.0
    errors: list[str] = []
    await asyncio.sleep(start_delay)  # clients do not all join on the same frame
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/api/chat") as ws:

        async def receive() -> None:
            nonlocal received_bytes, reply_s
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    return
                kind = msg.data[0]
                if kind == protocol.KIND_AUDIO:
                    received_bytes += len(msg.data) - 1
                    reply_s = last_granule_s(msg.data) or reply_s
                elif kind == protocol.KIND_ERROR:
                    errors.append(msg.data[1:].decode())

        receiver = asyncio.create_task(receive())
        start = time.perf_counter()
        sent = 0
        while time.perf_counter() - start < seconds and sent < len(pages):
            if pages[sent]:
                await ws.send_bytes(protocol.audio_message(pages[sent]))
            sent += 1
            delay = start + sent * 0.08 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        elapsed = time.perf_counter() - start
        await ws.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(receiver, 3)
    return {
        "received_audio_s": reply_s,
        "received_bytes": received_bytes,
        "elapsed_s": elapsed,
        "errors": errors,
    }


async def run_clients(url: str, n: int, seconds: float) -> list[dict]:
    pages = encode_loop(speech_loop(), seconds)
    cpu = time.process_time()
    results = await asyncio.gather(*(client(url, pages, seconds, 0.08 * i / max(n, 1)) for i in range(n)))
    results[0]["process_cpu_s"] = time.process_time() - cpu  # the whole client process, for all of them
    return list(results)


async def run_level(server: KameServer, url: str, n: int, seconds: float) -> dict:
    stats = server.stepper.stats
    before = (stats.steps, stats.frames, stats.late_frames, stats.resyncs)
    cpu_before = server.cpu.sample()
    stats.step_s.clear()
    lags: list[float] = []
    ttfts: list[float] = []
    underruns = 0

    def observe(event: dict) -> None:
        if is_a(event, OracleApplied):
            lags.append(float(event["lag"]))
        elif is_a(event, LLMFirstToken) and "ttft" in event:
            ttfts.append(float(event["ttft"]))

    original = server.metrics.on_event

    def on_event(event: dict) -> None:
        original(event)
        observe(event)

    server.metrics.on_event = on_event  # type: ignore[method-assign]
    # The clients run in another process, as they would on other machines: their Opus work and Python
    # must not compete with the server for its interpreter lock.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client-mode", url, "--clients", str(n), "--seconds", str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await proc.communicate()
    results = json.loads(stdout.decode().strip().splitlines()[-1])
    server.metrics.on_event = original  # type: ignore[method-assign]
    for session in list(server.sessions.values()):
        underruns += session.metrics.input_underruns
    steps = stats.steps - before[0]
    frames = stats.frames - before[1]
    cpu_after = server.cpu.sample()
    server_cpu_s = cpu_after.server_s - cpu_before.server_s
    frontend_cpu_s = cpu_after.frontend_s - cpu_before.frontend_s
    audio_cpu_s = cpu_after.audio_s - cpu_before.audio_s
    late = stats.late_frames - before[2]
    step_ms = [s * 1e3 for s in stats.step_s]
    return {
        "clients": n,
        "steps": steps,
        "session_frames": frames,
        "late_frame_pct": round(100 * late / frames, 3) if frames else None,
        "step_ms_p50": round(statistics.median(step_ms), 2) if step_ms else None,
        "step_ms_p99": round(float(np.percentile(step_ms, 99)), 2) if step_ms else None,
        "resyncs": stats.resyncs - before[3],
        "server_cpu_ms_per_frame": round(1e3 * server_cpu_s / frames, 3) if frames else None,
        "frontend_cpu_ms_per_frame": round(1e3 * frontend_cpu_s / frames, 3) if frames else None,
        "audio_cpu_ms_per_frame": round(1e3 * audio_cpu_s / frames, 3) if frames else None,
        "client_cpu_ms_per_frame": round(1e3 * results[0]["process_cpu_s"] / frames, 3) if frames else None,
        "oracle_lag_ms_median": round(statistics.median(lags) * 1e3, 1) if lags else None,
        "oracle_lag_ms_p90": round(float(np.percentile(lags, 90)) * 1e3, 1) if lags else None,
        "oracle_events_applied": len(lags),
        "llm_ttft_ms_median": round(statistics.median(ttfts) * 1e3, 1) if ttfts else None,
        "reply_audio_rate": round(min(r["received_audio_s"] / r["elapsed_s"] for r in results), 3),
        "client_errors": sum(len(r["errors"]) for r in results),
    }


async def main_async(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    slots = args.max_sessions or max(args.clients)
    if args.frame_clock == "process":
        stepper = ProcessStepper(
            FrontendProcessSpec(
                frontend=args.frontend, device=args.device, max_sessions=slots, warm_up_frames=20
            )
        )
        if args.audio_batch_ms is not None:
            stepper.audio_batch_s = args.audio_batch_ms / 1e3
    else:
        engine = FrontendEngine(load_frontend(args.frontend, device=args.device), max_sessions=slots)
        warm_up(engine, 20)
        stepper = FrameStepper(engine)
    backend = None if args.backend == "none" else Backend.from_spec(BackendSpec(stt=args.stt, llm=args.llm))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ServerConfig(port=port, idle_timeout_s=30, max_per_client=None, audio_workers=args.audio_workers)
    server = KameServer(stepper, backend, config)
    runner = web.AppRunner(server.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for n in args.clients:
            row = await run_level(server, url, n, args.seconds)
            rows.append(row)
            print(json.dumps(row), flush=True)
            await asyncio.sleep(1.0)
    finally:
        await runner.cleanup()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frontend", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", choices=["embedded", "none"], default="embedded")
    parser.add_argument("--frame-clock", choices=["process", "thread"], default="process")
    parser.add_argument("--stt", default="whisper")
    parser.add_argument("--llm", default="local")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--max-sessions", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--audio-batch-ms", type=float, default=None,
        help="coalesce user audio for the frame-clock process this long (0: one pipe message per packet)",
    )  # fmt: skip
    parser.add_argument("--audio-workers", type=int, default=0, help="kame serve --audio-workers")
    parser.add_argument("--json", default=None)
    parser.add_argument("--client-mode", default=None, metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_mode:
        print(json.dumps(asyncio.run(run_clients(args.client_mode, args.clients[0], args.seconds))))
        return
    info = {
        "frontend": args.frontend,
        "device": args.device,
        "backend": args.backend,
        "clock": args.frame_clock,
        "audio_workers": args.audio_workers,
    }
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    print(json.dumps(info), flush=True)
    rows = asyncio.run(main_async(args))
    header = ("N", "late %", "step p50", "step p99", "oracle lag", "ttft", "audio rate")
    print("\n{:>3} {:>8} {:>9} {:>9} {:>11} {:>7} {:>10}".format(*header))
    for r in rows:
        print(
            f"{r['clients']:>3} {r['late_frame_pct']!s:>8} {r['step_ms_p50']!s:>9} {r['step_ms_p99']!s:>9} "
            f"{r['oracle_lag_ms_median']!s:>11} {r['llm_ttft_ms_median']!s:>7} {r['reply_audio_rate']!s:>10}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"info": info, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
