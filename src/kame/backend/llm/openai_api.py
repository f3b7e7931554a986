"""``openai:MODEL``: OpenAI's Chat Completions API, or any server that speaks it (vLLM, llama.cpp, Ollama).

The base URL comes from ``LLMOptions.base_url``, the spec's ``@http://...`` suffix or ``OPENAI_BASE_URL``;
the key from ``LLMOptions.api_key`` or ``OPENAI_API_KEY``. A self-hosted server usually needs no key, so
none is required when a base URL is set. The client's own retries are off: ``RemoteLLM`` retries, and
only before the first token.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import openai

from kame.backend.llm.base import ChatMessage, LLMError
from kame.backend.llm.errors import connection_error, status_error, timeout_error
from kame.backend.llm.options import LLMOptions
from kame.backend.llm.remote import OpenStream, RemoteLLM

KEY_ENV = "OPENAI_API_KEY"
# Sent when a self-hosted server needs no key (the client library insists on some string).
NO_KEY = "no-key-needed"


class OpenAIChat(RemoteLLM):
    name = "openai"

    def __init__(self, model: str, options: LLMOptions) -> None:
        base_url = options.base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = options.api_key or os.environ.get(KEY_ENV)
        if not api_key:
            if base_url is None:
                message = f"no API key: set {KEY_ENV}, or give the base URL of a self-hosted server"
                raise LLMError(self.name, message)
            api_key = NO_KEY
        options.base_url = base_url
        super().__init__(model, options)
        self._official = base_url is None or "api.openai.com" in base_url
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=options.timeout, max_retries=0
        )

    @property
    def where(self) -> str:
        return self.options.base_url or "api.openai.com"

    async def _open(self, messages: list[ChatMessage], max_tokens: int, temperature: float) -> OpenStream:
        extra: dict[str, object] = {"max_completion_tokens" if self._official else "max_tokens": max_tokens}
        if self.options.seed is not None:
            extra["seed"] = self.options.seed
        stream = await self._client.chat.completions.create(
            model=self.model,
            messages=[{"role": m.role, "content": m.content} for m in messages],
            temperature=temperature,
            stream=True,
            **extra,
        )
        return OpenStream(chunks=_texts(stream), close=stream.close)

    def _translate(self, exc: Exception) -> LLMError | None:
        if isinstance(exc, openai.APITimeoutError):
            return timeout_error(self.name, self.where, self.options.timeout)
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return connection_error(self.name, self.where, f"{type(cause).__name__}: {cause}")
        if isinstance(exc, openai.APIStatusError):
            return status_error(
                self.name, exc.status_code, _detail(exc), model=self.model, where=self.where, key_env=KEY_ENV
            )
        if isinstance(exc, openai.OpenAIError):
            return LLMError(self.name, f"{type(exc).__name__}: {exc}")
        return None

    async def aclose(self) -> None:
        await self._client.close()


async def _texts(stream: openai.AsyncStream) -> AsyncIterator[str]:
    async for chunk in stream:
        for choice in chunk.choices or ():
            text = choice.delta.content if choice.delta is not None else None
            if text:
                yield text


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return exc.message
