"""The HTTP providers against real local servers that speak each protocol, working or failing on purpose.

Every failure must come back as an ``LLMError`` that says what to fix, with ``retryable`` set right, and
retries must happen only for failures that can pass and only before the first token.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web
from llm_servers import Record, Script, closed_port_url, scripted_app, serve

from kame.backend.llm import ChatMessage, LLMError, create_llm

QUESTION = [
    ChatMessage("system", "You are a helpful assistant. Answer in one short sentence."),
    ChatMessage("user", "What is the capital of France?"),
]

# protocol -> (spec prefix, what to append to the server's root URL to make the base URL)
PROVIDERS = {
    "openai": ("openai:test-model", "/v1"),
    "anthropic": ("anthropic:test-model", ""),
    "gemini": ("gemini:test-model", ""),
}
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
FAST = {"api_key": "test-key", "timeout": 1.0, "retries": 2, "backoff": 0.02}


async def _ask(protocol: str, script: Script, **options) -> tuple[str | LLMError, Record, float]:
    record = Record()
    prefix, suffix = PROVIDERS[protocol]
    async with serve(scripted_app(protocol, script, record)) as url:
        llm = create_llm(f"{prefix}@{url}{suffix}", **{**FAST, **options})
        start = time.monotonic()
        try:
            result: str | LLMError = await llm.complete(QUESTION, max_tokens=20)
        except LLMError as exc:
            result = exc
        finally:
            await llm.aclose()
        return result, record, time.monotonic() - start


@pytest.mark.parametrize("protocol", PROVIDERS)
def test_streams_an_answer(protocol, run):
    result, record, _ = run(_ask(protocol, Script(chunks=["Paris ", "is ", "the ", "capital."])))
    assert result == "Paris is the capital."
    assert len(record.requests) == 1
    body = json.dumps(record.requests[0])
    assert "What is the capital of France?" in body and "one short sentence" in body


@pytest.mark.parametrize("protocol", PROVIDERS)
def test_bad_key_is_reported_not_retried(protocol, run):
    result, record, _ = run(_ask(protocol, Script(mode="status", status=401, message="invalid key")))
    assert isinstance(result, LLMError) and not result.retryable
    assert "API key" in str(result) and "HTTP 401" in str(result) and "_API_KEY" in str(result)
    assert len(record.requests) == 1


@pytest.mark.parametrize("protocol", PROVIDERS)
def test_unknown_model_is_reported(protocol, run):
    result, record, _ = run(_ask(protocol, Script(mode="status", status=404, message="model not found")))
    assert isinstance(result, LLMError) and not result.retryable
    assert "unknown model 'test-model'" in str(result) and "HTTP 404" in str(result)
    assert len(record.requests) == 1


@pytest.mark.parametrize("protocol", PROVIDERS)
def test_server_errors_are_retried_then_reported(protocol, run):
    result, record, _ = run(_ask(protocol, Script(mode="status", status=500, message="boom")))
    assert isinstance(result, LLMError) and result.retryable
    assert "HTTP 500" in str(result) and "after 3 attempts" in str(result)
    assert len(record.requests) == 3  # 1 + retries


@pytest.mark.parametrize("protocol", PROVIDERS)
def test_a_passing_failure_is_retried_into_success(protocol, run):
    result, record, _ = run(_ask(protocol, Script(fail_first=1, status=503, chunks=["ok."])))
    assert result == "ok."
    assert len(record.requests) == 2


def test_stalled_server_times_out(run):
    result, record, took = run(_ask("openai", Script(mode="stall"), timeout=0.5, retries=1))
    assert isinstance(result, LLMError) and result.retryable
    assert "timeout" in str(result) and "0.5 s" in str(result)
    assert len(record.requests) == 2
    assert 1.0 <= took < 3.0


@pytest.mark.parametrize("protocol", ["anthropic", "gemini"])
def test_stalled_server_times_out_other_protocols(protocol, run):
    result, _, took = run(_ask(protocol, Script(mode="stall"), timeout=0.5, retries=0))
    assert isinstance(result, LLMError) and "timeout" in str(result) and took < 2.0


@pytest.mark.parametrize("protocol", PROVIDERS)
def test_closed_port_is_unreachable(protocol, run):
    prefix, suffix = PROVIDERS[protocol]

    async def ask() -> LLMError:
        llm = create_llm(f"{prefix}@{closed_port_url()}{suffix}", **FAST)
        try:
            await llm.complete(QUESTION)
        except LLMError as exc:
            return exc
        finally:
            await llm.aclose()
        raise AssertionError("a closed port answered")

    error = run(ask())
    assert error.retryable and "cannot reach" in str(error) and "after 3 attempts" in str(error)


@pytest.mark.parametrize("protocol", PROVIDERS)
def test_stream_cut_after_first_token_is_not_retried(protocol, run):
    result, record, _ = run(_ask(protocol, Script(mode="drop", chunks=["Paris ", "is ", "big."])))
    assert isinstance(result, LLMError) and "broke off after 1 chunk" in str(result)
    assert len(record.requests) == 1


@pytest.mark.parametrize("protocol", PROVIDERS)
def test_cancelling_closes_the_http_stream(protocol, run):
    """The server notices the client went away soon after the consuming task is cancelled."""
    prefix, suffix = PROVIDERS[protocol]
    script = Script(chunks=[f"word{i} " for i in range(200)], chunk_delay=0.02)
    record = Record()

    async def scenario() -> float:
        async with serve(scripted_app(protocol, script, record)) as url:
            llm = create_llm(f"{prefix}@{url}{suffix}", **FAST)
            got: list[str] = []

            async def consume() -> None:
                async for chunk in llm.stream_chat(QUESTION):
                    got.append(chunk)

            task = asyncio.create_task(consume())
            while len(got) < 3:
                await asyncio.sleep(0.005)
            task.cancel()
            cancelled_at = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await task
            while record.disconnected_at is None and time.monotonic() - cancelled_at < 2.0:
                await asyncio.sleep(0.01)
            await llm.aclose()
            if record.disconnected_at is None:
                raise AssertionError("the server kept streaming to a cancelled client")
            return record.disconnected_at - cancelled_at

    assert run(scenario()) < 0.5
    assert record.chunks_sent < 100


def _llama_backed_openai_app(model: str) -> web.Application:
    """An OpenAI-compatible chat-completions server whose answers come from the embedded llama model."""
    llm = create_llm("local", threads=1)

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("model") != model:
            message = f"model {body.get('model')!r} does not exist"
            error = {"error": {"message": message, "code": "model_not_found"}}
            return web.json_response(error, status=404)
        messages = [ChatMessage(m["role"], m["content"]) for m in body["messages"]]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 64
        temperature = body.get("temperature", 0.0)
        async for text in llm.stream_chat(messages, max_tokens=max_tokens, temperature=temperature):
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    return app


def test_openai_compatible_server_backed_by_the_local_model(run):
    async def scenario() -> tuple[list[str], LLMError]:
        async with serve(_llama_backed_openai_app("smollm2")) as url:
            llm = create_llm(f"openai:smollm2@{url}/v1", timeout=10.0)
            chunks = [c async for c in llm.stream_chat(QUESTION, max_tokens=40, temperature=0.0)]
            wrong = create_llm(f"openai:gpt-9@{url}/v1", timeout=10.0)
            try:
                await wrong.complete(QUESTION)
            except LLMError as exc:
                error = exc
            await llm.aclose()
            await wrong.aclose()
            return chunks, error

    chunks, error = run(scenario())
    assert "Paris" in "".join(chunks) and len(chunks) >= 3
    assert "unknown model 'gpt-9'" in str(error) and "does not exist" in str(error)
