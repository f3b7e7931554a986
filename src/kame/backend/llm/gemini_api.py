"""``gemini:MODEL``: Google's Gemini API through the official ``google-genai`` client, streamed.

The key comes from ``LLMOptions.api_key``, ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``; a base URL (a proxy
or a test server) from the options, the spec's ``@http://...`` suffix or ``GOOGLE_GEMINI_BASE_URL``. The
client's own retries (including its silent 1-10 s retry on connection errors) are turned off:
``RemoteLLM`` retries, and only before the first token.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from kame.backend.llm.base import ChatMessage, LLMError
from kame.backend.llm.errors import connection_error, status_error, timeout_error
from kame.backend.llm.options import LLMOptions
from kame.backend.llm.remote import OpenStream, RemoteLLM

KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")


class GeminiChat(RemoteLLM):
    name = "gemini"

    def __init__(self, model: str, options: LLMOptions) -> None:
        base_url = options.base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or None
        api_key = options.api_key or next((os.environ[k] for k in KEY_ENVS if os.environ.get(k)), None)
        if not api_key:
            raise LLMError(self.name, f"no API key: set {' or '.join(KEY_ENVS)}")
        options.base_url = base_url
        super().__init__(model, options)
        # The HTTP timeout bounds the whole streamed response; ours bounds each chunk, so it is the tighter.
        http = types.HttpOptions(
            base_url=base_url,
            timeout=int(max(60.0, 4 * options.timeout) * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        try:
            self._client = genai.Client(api_key=api_key, http_options=http)
        except ValueError as exc:
            raise LLMError(self.name, f"cannot configure the client: {exc}") from exc

    @property
    def where(self) -> str:
        return self.options.base_url or "generativelanguage.googleapis.com"

    async def _open(self, messages: list[ChatMessage], max_tokens: int, temperature: float) -> OpenStream:
        system = "\n\n".join(m.content for m in messages if m.role == "system")
        contents = [
            types.Content(
                role="model" if m.role == "assistant" else "user", parts=[types.Part(text=m.content)]
            )
            for m in messages
            if m.role != "system"
        ]
        if not contents:
            raise LLMError(self.name, "the conversation has no user message")
        config = types.GenerateContentConfig(
            system_instruction=system or None, max_output_tokens=max_tokens, temperature=temperature
        )
        responses = await self._client.aio.models.generate_content_stream(
            model=self.model, contents=contents, config=config
        )
        return OpenStream(chunks=_texts(responses), close=responses.aclose)

    def _translate(self, exc: Exception) -> LLMError | None:
        if isinstance(exc, genai_errors.APIError):
            detail = exc.message or exc.status or str(exc)
            return status_error(
                self.name, int(exc.code or 0), detail, model=self.model, where=self.where, key_env=KEY_ENVS[0]
            )
        if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
            return timeout_error(self.name, self.where, self.options.timeout)
        if isinstance(exc, aiohttp.ClientError | OSError):
            return connection_error(self.name, self.where, f"{type(exc).__name__}: {exc}")
        if type(exc).__module__.split(".")[0] in ("httpx", "httpx2"):
            return connection_error(self.name, self.where, f"{type(exc).__name__}: {exc}")
        return None

    async def aclose(self) -> None:
        await self._client.aio.aclose()


async def _texts(responses: AsyncIterator[types.GenerateContentResponse]) -> AsyncIterator[str]:
    async for response in responses:
        for candidate in response.candidates or ():
            content = candidate.content
            for part in (content.parts if content is not None else None) or ():
                if part.text and not part.thought:
                    yield part.text
