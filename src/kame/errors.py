"""The errors a user can cause and fix, as one family: the CLI prints their message (which says what to
do) without a traceback, and shows the traceback of anything else (a bug, a CUDA out-of-memory)."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (a bad flag, file, spec or key); the message says how."""


class ProviderError(UserError):
    """A speech-to-text, LLM or speech-synthesis engine failed or cannot be set up.

    ``provider`` names it (``openai``, ``whisper``, ``piper``...); ``retryable`` is true for failures
    that may pass (rate limits, server errors, network trouble, timeouts).
    """

    provider: str = "provider"

    def __init__(self, message: str, *, provider: str | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        if provider is not None:
            self.provider = provider
        self.retryable = retryable
