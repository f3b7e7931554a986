"""What every HTTP provider shares: retries before the first chunk, timeouts, and closing on cancel.

A provider subclass only opens its provider's stream (``_open``) and translates its client library's
exceptions into ``LLMError`` (``_translate``). This class turns that into the ``stream_chat`` contract:
retryable failures before the first chunk are retried with exponential backoff; a chunk that does not
come within ``timeout`` seconds ends the request; and whatever way the consumer stops (cancellation,
``aclose``, an exception) the HTTP stream is closed, so the server stops generating.
"""

from __future__ import annotations

import asyncio
import logging
import random
from abc import abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from kame.backend.llm.base import ChatMessage, LLMError, LLMProvider
from kame.backend.llm.errors import timeout_error
from kame.backend.llm.options import LLMOptions

logger = logging.getLogger(__name__)


@dataclass
class OpenStream:
    """A request in flight: its text pieces and how to abort it."""

    chunks: AsyncIterator[str]
    close: Callable[[], Awaitable[None]]


class RemoteLLM(LLMProvider):
    """Base of the HTTP providers (OpenAI-compatible, Anthropic, Gemini)."""

    def __init__(self, model: str, options: LLMOptions) -> None:
        self.model = model
        self.options = options

    @property
    def where(self) -> str:
        """The server, for messages."""
        return self.options.base_url or "the default endpoint"

    @abstractmethod
    async def _open(self, messages: list[ChatMessage], max_tokens: int, temperature: float) -> OpenStream:
        """Send the request and return its stream once the server has accepted it."""

    @abstractmethod
    def _translate(self, exc: Exception) -> LLMError | None:
        """The LLMError for a client-library exception, or None when it is not the client's."""

    def _as_llm_error(self, exc: BaseException) -> LLMError:
        if isinstance(exc, LLMError):
            return exc
        if isinstance(exc, TimeoutError):
            return timeout_error(self.name, self.where, self.options.timeout)
        if isinstance(exc, Exception):
            translated = self._translate(exc)
            if translated is not None:
                return translated
        return LLMError(self.name, f"unexpected {type(exc).__name__}: {exc}")

    async def _connect(
        self, messages: list[ChatMessage], max_tokens: int, temperature: float
    ) -> tuple[OpenStream, str | None]:
        """Open the stream and wait for its first chunk, retrying what may pass (before any output)."""
        attempts = self.options.retries + 1
        for attempt in range(attempts):
            stream: OpenStream | None = None
            try:
                async with asyncio.timeout(self.options.timeout):
                    stream = await self._open(messages, max_tokens, temperature)
                    first = await anext(stream.chunks, None)
                return stream, first
            except Exception as exc:  # noqa: BLE001 - every failure becomes an LLMError
                if stream is not None:
                    await _close_quietly(stream)
                error = self._as_llm_error(exc)
                if not error.retryable or attempt + 1 == attempts:
                    if attempt > 0:
                        error.args = (f"{error.args[0]} (after {attempt + 1} attempts)",)
                    raise error from exc
                delay = self.options.backoff * (2**attempt) * (1.0 + 0.25 * random.random())
                logger.info("%s: %s; retrying in %.2f s", self.name, error, delay)
                await asyncio.sleep(delay)
            except BaseException:  # cancelled while connecting: abort the request
                if stream is not None:
                    await _close_quietly(stream)
                raise
        raise LLMError(self.name, "no attempt was made (retries must be 0 or more)")

    async def stream_chat(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int = 96,
        temperature: float = 0.3,
    ) -> AsyncIterator[str]:
        if not messages:
            raise LLMError(self.name, "no messages to answer")
        stream, first = await self._connect(messages, max_tokens, temperature)
        received = 0
        try:
            if first is None:
                return
            if first:
                received += 1
                yield first
            while True:
                try:
                    async with asyncio.timeout(self.options.timeout):
                        chunk = await anext(stream.chunks, None)
                except LLMError:
                    raise
                except TimeoutError as exc:
                    message = f"the answer from {self.where} stalled after {received} chunk(s) (timeout)"
                    raise LLMError(self.name, message, retryable=True) from exc
                except Exception as exc:  # noqa: BLE001 - every failure becomes an LLMError
                    cause = exc.__cause__ or exc
                    message = (
                        f"the answer from {self.where} broke off after {received} chunk(s) "
                        f"({type(cause).__name__}: {cause})"
                    )
                    raise LLMError(self.name, message, retryable=True) from exc
                if chunk is None:
                    return
                if chunk:
                    received += 1
                    yield chunk
        finally:
            await _close_quietly(stream)


async def _close_quietly(stream: OpenStream) -> None:
    """Abort the HTTP stream; failures are logged, cancellation still propagates."""
    try:
        await asyncio.shield(stream.close())
    except Exception as exc:  # noqa: BLE001
        logger.debug("closing an LLM stream failed: %r", exc)
