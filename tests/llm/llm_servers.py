"""Real HTTP servers on 127.0.0.1 that speak the OpenAI, Anthropic and Gemini streaming protocols.

Each answers from a ``Script``: stream given chunks (optionally slowly), fail with an HTTP status and the
protocol's error body, stall without answering, or drop the connection after the first chunk. The
server records every request and when a client went away mid-stream, so tests can check that a
cancelled request was really closed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Script:
    mode: str = "stream"  # stream | status | stall | drop
    chunks: list[str] = field(default_factory=lambda: ["Paris ", "is ", "the ", "capital."])
    chunk_delay: float = 0.0
    status: int = 500
    message: str = "scripted failure"
    fail_first: int = 0  # answer ``status`` to this many requests, then follow ``mode``
    first_modes: list[str] = field(default_factory=list)  # modes of the first requests, then ``mode``


@dataclass
class Record:
    requests: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    disconnected_at: float | None = None
    chunks_sent: int = 0


# --- the three protocols: how a chunk, the end and an error look on the wire ---------------------------


def openai_chunk(text: str) -> bytes:
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "test",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


def openai_end() -> bytes:
    return b"data: [DONE]\n\n"


def openai_error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": str(status)}}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def anthropic_start() -> bytes:
    message = {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "test",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 0},
    }
    return _event("message_start", {"type": "message_start", "message": message}) + _event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )


def anthropic_chunk(text: str) -> bytes:
    return _event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    )


def anthropic_end() -> bytes:
    return (
        _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        + _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 1},
            },
        )
        + _event("message_stop", {"type": "message_stop"})
    )


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    kind = {401: "authentication_error", 404: "not_found_error"}.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def gemini_chunk(text: str) -> bytes:
    body = {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}]}
    return f"data: {json.dumps(body)}\r\n\r\n".encode()


def gemini_error(status: int, message: str) -> dict[str, Any]:
    name = {401: "UNAUTHENTICATED", 404: "NOT_FOUND"}.get(status, "INTERNAL")
    return {"error": {"code": status, "message": message, "status": name}}


@dataclass
class Protocol:
    start: Callable[[], bytes]
    chunk: Callable[[str], bytes]
    end: Callable[[], bytes]
    error: Callable[[int, str], dict[str, Any]]


PROTOCOLS = {
    "openai": Protocol(lambda: b"", openai_chunk, openai_end, openai_error),
    "anthropic": Protocol(anthropic_start, anthropic_chunk, anthropic_end, anthropic_error),
    "gemini": Protocol(lambda: b"", gemini_chunk, lambda: b"", gemini_error),
}


def scripted_app(protocol: str, script: Script, record: Record) -> web.Application:
    proto = PROTOCOLS[protocol]

    async def handle(request: web.Request) -> web.StreamResponse:
        record.paths.append(request.path)
        record.headers.append(dict(request.headers))
        try:
            record.requests.append(await request.json())
        except (json.JSONDecodeError, UnicodeDecodeError):
            record.requests.append({})
        number = len(record.requests)
        mode = script.first_modes[number - 1] if number <= len(script.first_modes) else script.mode
        if number <= script.fail_first or mode == "status":
            return web.json_response(proto.error(script.status, script.message), status=script.status)
        if mode == "stall":
            await asyncio.sleep(3600)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(proto.start())
            for i, text in enumerate(script.chunks):
                if i and script.chunk_delay:
                    await asyncio.sleep(script.chunk_delay)
                await response.write(proto.chunk(text))
                record.chunks_sent += 1
                if mode == "drop":
                    request.transport.close()  # type: ignore[union-attr]
                    return response
            await response.write(proto.end())
            await response.write_eof()
        except ConnectionResetError:
            record.disconnected_at = time.monotonic()
        return response

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    return app


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1 at a free port; yields its root URL."""
    runner = web.AppRunner(app, shutdown_timeout=0.1)  # a stalled handler must not hold up the test
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
