"""The interface every LLM provider implements: an async stream of text chunks for a chat.

Providers are chosen at run time by a spec string (``local``, ``openai:MODEL``, ``anthropic:MODEL``,
``gemini:MODEL``); the oracle engine and the data builder only ever see this interface. Cancelling the
task that iterates ``stream_chat`` must really stop the request (close the HTTP stream, stop the local
decoding loop), because the oracle engine cancels stale answers constantly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from kame.errors import ProviderError
from kame.lifecycle import Engine


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


class LLMError(ProviderError, RuntimeError):
    """A provider failed: bad key, unknown model, unreachable server, API error, timeout.

    ``retryable`` tells callers whether trying again later can help.
    """

    def __init__(self, provider: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{provider}: {message}", provider=provider, retryable=retryable)


class LLMProvider(Engine, ABC):
    """A chat model that streams its answer."""

    name: str = "llm"

    @abstractmethod
    def stream_chat(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int = 96,
        temperature: float = 0.3,
    ) -> AsyncIterator[str]:
        """Yield the answer's text in chunks as they are produced. Raises LLMError."""

    async def complete(self, messages: list[ChatMessage], **kwargs) -> str:
        """The whole answer (for offline uses such as data generation)."""
        return "".join([chunk async for chunk in self.stream_chat(messages, **kwargs)])

    def bind(self, record) -> LLMProvider:
        """This provider as one session uses it; ``record(text, **fields)`` reports decisions it makes for
        that session (the router's choice of back-end). Most providers have none: themselves."""
        return self
