"""``anthropic:MODEL``: Anthropic's Messages API, streamed.

The key comes from ``LLMOptions.api_key`` or ``ANTHROPIC_API_KEY``; the base URL from the options, the
spec's ``@http://...`` suffix or ``ANTHROPIC_BASE_URL``. System messages become the ``system`` field and
consecutive messages of one role are joined, as the API requires alternating turns. The temperature is
sent only where the installed client still accepts it (recent ones dropped sampling parameters).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator

import anthropic
from anthropic.resources.messages import AsyncMessages

from kame.backend.llm.base import ChatMessage, LLMError
from kame.backend.llm.errors import connection_error, status_error, timeout_error
from kame.backend.llm.options import LLMOptions
from kame.backend.llm.remote import OpenStream, RemoteLLM

KEY_ENV = "ANTHROPIC_API_KEY"
NO_KEY = "no-key-needed"
# Recent clients dropped the sampling parameters (the newest models fix them); older ones take them.
TAKES_TEMPERATURE = "temperature" in inspect.signature(AsyncMessages.create).parameters


class AnthropicChat(RemoteLLM):
    name = "anthropic"

    def __init__(self, model: str, options: LLMOptions) -> None:
        base_url = options.base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        api_key = options.api_key or os.environ.get(KEY_ENV)
        if not api_key:
            if base_url is None:
                raise LLMError(self.name, f"no API key: set {KEY_ENV}")
            api_key = NO_KEY
        options.base_url = base_url
        super().__init__(model, options)
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, timeout=options.timeout, max_retries=0
        )

    @property
    def where(self) -> str:
        return self.options.base_url or "api.anthropic.com"

    async def _open(self, messages: list[ChatMessage], max_tokens: int, temperature: float) -> OpenStream:
        system, turns = split_system(messages)
        if not turns:
            raise LLMError(self.name, "the conversation has no user message")
        extra: dict[str, object] = {"system": system} if system else {}
        if TAKES_TEMPERATURE:
            extra["temperature"] = temperature
        stream = await self._client.messages.create(
            model=self.model,
            max_tokens=max_tokens,
            messages=turns,
            stream=True,
            **extra,
        )
        return OpenStream(chunks=_texts(stream), close=stream.close)

    def _translate(self, exc: Exception) -> LLMError | None:
        if isinstance(exc, anthropic.APITimeoutError):
            return timeout_error(self.name, self.where, self.options.timeout)
        if isinstance(exc, anthropic.APIConnectionError):
            cause = exc.__cause__ or exc
            return connection_error(self.name, self.where, f"{type(cause).__name__}: {cause}")
        if isinstance(exc, anthropic.APIStatusError):
            return status_error(
                self.name, exc.status_code, _detail(exc), model=self.model, where=self.where, key_env=KEY_ENV
            )
        if isinstance(exc, anthropic.AnthropicError):
            return LLMError(self.name, f"{type(exc).__name__}: {exc}")
        return None

    async def aclose(self) -> None:
        await self._client.close()


def split_system(messages: list[ChatMessage]) -> tuple[str, list[dict[str, str]]]:
    """System text apart; the rest merged into alternating user/assistant turns."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    turns: list[dict[str, str]] = []
    for m in messages:
        if m.role == "system":
            continue
        if turns and turns[-1]["role"] == m.role:
            turns[-1]["content"] += "\n" + m.content
        else:
            turns.append({"role": m.role, "content": m.content})
    return system, turns


async def _texts(stream: anthropic.AsyncStream) -> AsyncIterator[str]:
    async for event in stream:
        if event.type == "content_block_delta" and getattr(event.delta, "type", "") == "text_delta":
            yield event.delta.text
        elif event.type == "error":  # an error event inside an accepted stream
            detail = getattr(event, "error", event)
            raise LLMError("anthropic", f"the stream failed: {detail}", retryable=True)


def _detail(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return exc.message
