"""A real OpenAI-compatible HTTP server (127.0.0.1, random port) whose answers are a pure function of the
prompt, for build tests that must be fast and exactly repeatable; prompts containing ``fail_marker`` get
HTTP 500. It can run in its own thread, so a ``kame data build`` subprocess can use it."""

from __future__ import annotations

import asyncio
import json
import threading
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, contextmanager

from aiohttp import web

WORDS = [
    "the",
    "answer",
    "is",
    "clearly",
    "about",
    "that",
    "question",
    "and",
    "here",
    "is",
    "a",
    "short",
    "spoken",
    "guess",
    "for",
    "it",
]


def scripted_answer(prompt: str) -> str:
    code = zlib.crc32(prompt.encode())
    picked = [WORDS[(code >> (3 * i)) % len(WORDS)] for i in range(8)]
    return "Well, " + " ".join(picked) + f", number {code % 97}."


def app(fail_marker: str = "FAILME", delay: float = 0.0) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = "\n".join(m["content"] for m in body["messages"])
        if fail_marker and fail_marker in prompt:
            return web.json_response({"error": {"message": "scripted failure"}}, status=500)
        if delay:
            await asyncio.sleep(delay)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in scripted_answer(prompt).split(" "):
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "sim",
                "choices": [{"index": 0, "delta": {"content": piece + " "}, "finish_reason": None}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    application = web.Application()
    application.router.add_post("/v1/chat/completions", handle)
    return application


@contextmanager
def serve_in_thread(**options):
    """Run the server on its own event loop thread; yields the OpenAI base URL."""
    loop = asyncio.new_event_loop()
    ready: dict[str, object] = {}

    async def start() -> None:
        runner = web.AppRunner(app(**options), shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ready["runner"] = runner
        ready["url"] = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore[union-attr]

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield str(ready["url"])
    finally:
        asyncio.run_coroutine_threadsafe(ready["runner"].cleanup(), loop).result(timeout=10)  # type: ignore[union-attr]
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


@asynccontextmanager
async def serve(application: web.Application) -> AsyncIterator[str]:
    """Run ``application`` on the current event loop; yields its root URL."""
    runner = web.AppRunner(application, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()
