"""Soak and faults: ``kame serve`` under sessions that join and leave for a long time, some misbehaving.

The server is the real CLI in its own process (the tiny front-end in its frame-clock child, Whisper for
the STT, ``--when-full queue`` so that a client arriving while a leaving session is still being closed
waits a moment instead of being refused), on 127.0.0.1 only. Its LLM is an OpenAI-compatible server
run here, on loopback, that streams each answer at a realistic pace, or stalls after the first words,
or dies mid-stream (chosen per request), so that sessions see LLMs that stall or die. The clients,
looping a spoken question:

- ``good``: real time, reads everything. It must get the handshake first, reply audio at the real-time
  rate (from Ogg granule positions) and no error; otherwise it was served wrongly;
- ``fast``: sends 3x faster than real time;
- ``deaf``: never reads its socket (the TCP window fills up);
- ``dropper``: leaves in the middle of a WebSocket frame (and of an Ogg page) by resetting the socket.

Every ``--report-every`` seconds it prints late frames in that window (from /metrics), live sessions,
and the server's RSS and open file descriptors (server and frame-clock child); at the end, those at
the start and the end, restarts, every timeline checked whole, and any session served wrongly.

    python bench/soak.py --minutes 20 --sessions 2 --json bench/results/soak_cpu_tiny.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import encode_loop, last_granule_s, speech_loop  # noqa: E402

KINDS = ("good", "good", "fast", "deaf", "dropper")  # two well-behaved clients for each misbehaving one
ANSWER = "The tallest mountain in Europe is Mount Elbrus, in the Caucasus, at 5642 metres."


# -- the LLM with faults ----------------------------------------------------------------------------
@dataclass
class FaultyLLM:
    """An OpenAI-compatible streaming chat endpoint: ok, stall or die mid-stream, per request."""

    stall_share: float = 0.2
    die_share: float = 0.2
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "stall": 0, "die": 0})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        roll = random.random()
        fate = (
            "stall"
            if roll < self.stall_share
            else "die"
            if roll < self.stall_share + self.die_share
            else "ok"
        )
        self.counts[fate] += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):  # the oracle engine cancels stale answers
            await self._stream(request, response, fate)
        return response

    async def _stream(self, request: web.Request, response: web.StreamResponse, fate: str) -> None:
        words = ANSWER.split()
        for i, word in enumerate(words):
            delta = {"index": 0, "delta": {"content": (" " if i else "") + word}, "finish_reason": None}
            chunk = {"id": "soak", "object": "chat.completion.chunk", "created": 0, "model": "soak"}
            await response.write(f"data: {json.dumps({**chunk, 'choices': [delta]})}\n\n".encode())
            await asyncio.sleep(0.03)
            if i == 2 and fate == "stall":
                await asyncio.sleep(60)  # the oracle engine gives up on it or moves on
            if i == 2 and fate == "die":
                if request.transport is not None:  # None when the client already left
                    request.transport.close()
                return
        await response.write(b"data: [DONE]\n\n")


# -- clients ----------------------------------------------------------------------------------------
@dataclass
class Outcome:
    kind: str
    seconds: float
    handshake_first: bool = False
    reply_s: float = 0.0
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    failure: str | None = None  # the connection itself failed

    def wrongly_served(self) -> str | None:
        """For a well-behaved client: what went wrong, if anything."""
        if self.kind != "good":
            return None
        if self.failure:
            return f"connection failed: {self.failure}"
        if not self.handshake_first:
            return "no handshake before other messages"
        if self.errors:
            return f"server error: {self.errors[0]}"
        if self.elapsed_s > 2 and self.reply_s < 0.9 * self.elapsed_s - 0.5:
            return f"reply audio {self.reply_s:.1f} s for {self.elapsed_s:.1f} s of session"
        return None


async def run_client(url: str, pages: list[bytes], kind: str, seconds: float) -> Outcome:
    outcome = Outcome(kind, seconds)
    pace = 0.08 / 3 if kind == "fast" else 0.08
    frames = int(seconds / 0.08)
    try:
        # A deaf client's library stops reading the socket once 1 message is queued.
        async with connect(url, max_queue=1 if kind == "deaf" else None, open_timeout=20,
                           close_timeout=2, max_size=None) as ws:  # fmt: skip
            handshake_at: list[float] = []

            async def receive() -> None:
                first = True
                async for data in ws:
                    if first:
                        outcome.handshake_first = data == b"\x00"
                        handshake_at.append(time.perf_counter())
                        first = False
                    if data[:1] == b"\x01":
                        outcome.reply_s = last_granule_s(data) or outcome.reply_s
                    elif data[:1] == b"\x05":
                        outcome.errors.append(data[1:].decode(errors="replace"))

            receiver = asyncio.create_task(receive()) if kind != "deaf" else None
            start = time.perf_counter()
            for i in range(min(frames, len(pages))):
                if kind == "dropper" and i == frames // 2:
                    # Half a WebSocket frame (masked binary, 4 KiB announced), then a reset socket.
                    header = struct.pack("!BBH", 0x82, 0x80 | 126, 4096) + os.urandom(4)
                    ws.transport.write(header + pages[i][: len(pages[i]) // 2])
                    ws.transport.abort()
                    break
                if pages[i]:
                    await ws.send(b"\x01" + pages[i])
                delay = start + (i + 1) * pace - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            outcome.elapsed_s = time.perf_counter() - (handshake_at[0] if handshake_at else start)
            if receiver is not None:
                await ws.close()
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(receiver, 5)
    except Exception as exc:  # noqa: BLE001 - recorded: for a good client this is a wrongly served one
        if kind in ("good", "fast") and not outcome.elapsed_s:
            outcome.failure = f"{type(exc).__name__}: {exc}"
    return outcome


# -- the server process -----------------------------------------------------------------------------
def proc_figures(pid: int) -> tuple[float, int]:
    """RSS (MB) and open file descriptors of a process (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
        return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return 0.0, 0


def child_pids(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    pids = [int(p) for p in out.split()]
    return [p for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


def server_figures(pid: int) -> dict:
    rss, fds = proc_figures(pid)
    child_rss, child_fds = 0.0, 0
    for child in child_pids(pid):
        r, f = proc_figures(child)
        child_rss, child_fds = child_rss + r, child_fds + f
    return {"rss_mb": round(rss, 1), "fds": fds, "child_rss_mb": round(child_rss, 1), "child_fds": child_fds}


def counters(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line.startswith(
            ("kame_frames_total ", "kame_late_frames_total ", "kame_frontend_restarts_total ")
        ):
            name, value = line.split()
            values[name] = float(value)
    return values


async def soak(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="kame-soak-"))
    checkpoint = args.frontend
    if checkpoint is None:
        from kame.frontend.checkpoint import init_checkpoint

        checkpoint = str(workdir / "tiny")
        init_checkpoint(checkpoint, preset="tiny", seed=0)
    llm = FaultyLLM(args.stall_share, args.die_share)
    llm_app = web.Application()
    llm_app.router.add_post("/v1/chat/completions", llm.chat)
    llm_runner = web.AppRunner(llm_app, access_log=None)
    await llm_runner.setup()
    llm_site = web.TCPSite(llm_runner, "127.0.0.1", 0)
    await llm_site.start()
    llm_port = llm_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    port = _free_port()
    timelines = workdir / "timelines"
    command = [
        sys.executable, "-m", "kame", "serve", "--frontend", checkpoint, "--host", "127.0.0.1",
        "--port", str(port), "--max-sessions", str(args.sessions), "--stt", args.stt,
        "--llm", f"openai:soak@http://127.0.0.1:{llm_port}/v1", "--max-per-client", "0",
        "--timeline-dir", str(timelines), "--idle-timeout", "10", "--when-full", "queue",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_TORCH_COMPILE": "1"}
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed at the end
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    ws_url = f"ws://127.0.0.1:{port}/api/chat"
    report: dict = {"sessions": args.sessions, "minutes": args.minutes, "stt": args.stt, "windows": []}
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 300
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"kame serve exited: {(workdir / 'server.log').read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    if (await http.get(url + "/healthz")).status == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("kame serve did not come up in 300 s")
                await asyncio.sleep(0.5)
            pages = encode_loop(speech_loop(), 60.0)
            # Warm up (Whisper, the first sessions' allocations) before taking the start figures.
            await asyncio.gather(*(run_client(ws_url, pages, "good", 8.0) for _ in range(args.sessions)))
            await asyncio.sleep(2.0)
            report["start"] = server_figures(server.pid)
            last = counters(await (await http.get(url + "/metrics")).text())
            first = dict(last)
            outcomes: list[Outcome] = []
            running: set[asyncio.Task[Outcome]] = set()
            rng = random.Random(args.seed)
            end = time.monotonic() + args.minutes * 60
            next_report = time.monotonic() + args.report_every
            started = time.monotonic()
            while time.monotonic() < end or running:
                while time.monotonic() < end and len(running) < args.sessions:
                    kind = rng.choice(KINDS)
                    seconds = rng.uniform(8, 30)
                    running.add(asyncio.create_task(run_client(ws_url, pages, kind, seconds)))
                    await asyncio.sleep(rng.uniform(0.2, 1.5))  # sessions join at different moments
                done, running = await asyncio.wait(running, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                outcomes.extend(task.result() for task in done)
                if time.monotonic() >= next_report:
                    now = counters(await (await http.get(url + "/metrics")).text())
                    frames = now.get("kame_frames_total", 0) - last.get("kame_frames_total", 0)
                    late = now.get("kame_late_frames_total", 0) - last.get("kame_late_frames_total", 0)
                    window = {
                        "t_min": round((time.monotonic() - started) / 60, 2),
                        "late_pct": round(100 * late / frames, 3) if frames else None,
                        "frames": int(frames),
                        "sessions_done": len(outcomes),
                        **server_figures(server.pid),
                    }
                    report["windows"].append(window)
                    print(json.dumps(window), flush=True)
                    last, next_report = now, time.monotonic() + args.report_every
            await asyncio.sleep(args.settle)  # let the last sessions' sockets and timelines close
            health = await (await http.get(url + "/healthz")).json()
            final = counters(await (await http.get(url + "/metrics")).text())
            report["end"] = server_figures(server.pid)
        frames = final.get("kame_frames_total", 0) - first.get("kame_frames_total", 0)
        late = final.get("kame_late_frames_total", 0) - first.get("kame_late_frames_total", 0)
        wrong = [
            {"kind": o.kind, "seconds": round(o.seconds, 1), "why": o.wrongly_served()}
            for o in outcomes
            if o.wrongly_served()
        ]
        broken = []
        for path in timelines.glob("*.jsonl"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                try:
                    json.loads(line)
                except ValueError:
                    broken.append(f"{path.name}:{number}")
        by_kind: dict[str, int] = {}
        for o in outcomes:
            by_kind[o.kind] = by_kind.get(o.kind, 0) + 1
        report.update(
            {
                "late_pct": round(100 * late / frames, 3) if frames else None,
                "frames": int(frames),
                "sessions_by_kind": by_kind,
                "llm_requests": dict(llm.counts),
                "restarts": health.get("restarts"),
                "health": health.get("status"),
                "server_alive": server.poll() is None,
                "rss_growth_mb": round(report["end"]["rss_mb"] - report["start"]["rss_mb"], 1),
                "fds_start_end": [report["start"]["fds"], report["end"]["fds"]],
                "timelines": len(list(timelines.glob("*.jsonl"))),
                "timeline_lines_broken": broken,
                "wrongly_served": wrong,
            }
        )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            report["exit_code"] = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            report["exit_code"] = "killed"
        log.close()
        await llm_runner.cleanup()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--sessions", type=int, default=2, help="concurrent sessions (the server's slots)")
    parser.add_argument("--frontend", default=None, help="checkpoint (default: a tiny random one)")
    parser.add_argument("--stt", default="whisper")
    parser.add_argument("--stall-share", type=float, default=0.2, help="LLM answers that stall")
    parser.add_argument("--die-share", type=float, default=0.2, help="LLM answers that die mid-stream")
    parser.add_argument("--report-every", type=float, default=60.0, help="seconds between progress lines")
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server log, timelines)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = asyncio.run(soak(args))
    print(json.dumps({k: v for k, v in report.items() if k != "windows"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
