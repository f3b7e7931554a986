"""One wording for the failures every provider shares, so users see the same advice whatever the API.

Client libraries raise their own exception types; providers translate them here by HTTP status (or by
"could not connect"), so that the message says what went wrong and what to change, and ``retryable``
is set for the failures that may pass (rate limits, server errors, network trouble, timeouts).
"""

from __future__ import annotations

from kame.backend.llm.base import LLMError


def status_error(
    provider: str, status: int, detail: str, *, model: str, where: str, key_env: str
) -> LLMError:
    """The LLMError for an HTTP error status answered by the server at ``where``."""
    detail = " ".join(str(detail).split())[:300]
    if status == 401:
        return LLMError(
            provider,
            f"{where} rejected the API key (HTTP 401: {detail}); set {key_env} to a valid key",
        )
    if status == 403:
        return LLMError(provider, f"{where} refused access (HTTP 403: {detail}); check the key's permissions")
    if status == 404:
        return LLMError(
            provider,
            f"unknown model {model!r} or wrong URL at {where} (HTTP 404: {detail}); check the model name "
            "and the base URL",
        )
    if status == 408:
        return LLMError(provider, f"{where} timed out the request (HTTP 408: {detail})", retryable=True)
    if status == 429:
        return LLMError(
            provider,
            f"{where} is rate limiting (HTTP 429: {detail}); slow down or retry later",
            retryable=True,
        )
    if status >= 500:
        return LLMError(provider, f"server error at {where} (HTTP {status}: {detail})", retryable=True)
    return LLMError(provider, f"{where} rejected the request (HTTP {status}: {detail})")


def connection_error(provider: str, where: str, detail: str) -> LLMError:
    return LLMError(
        provider,
        f"cannot reach {where} ({detail}); check that the server runs and the base URL is right",
        retryable=True,
    )


def timeout_error(provider: str, where: str, seconds: float) -> LLMError:
    return LLMError(provider, f"no answer from {where} within {seconds:g} s (timeout)", retryable=True)
