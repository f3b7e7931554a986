"""The one lifecycle every engine shares (speech-to-text, LLM, speech synthesis), as Pipecat's services do.

``await engine.load()`` loads what is heavy (weights, a connection check) before the first use, and is
idempotent; ``await engine.aclose()`` releases it. Engines whose work blocks do it on a thread, so that
neither call ever stalls an event loop. Failures raise the engine's ``ProviderError`` subclass.
"""

from __future__ import annotations


class Engine:
    """A provider of one capability, named by ``name`` (the spec's engine or provider)."""

    name: str = "engine"

    async def load(self) -> None:  # noqa: B027 - engines that load lazily keep this no-op
        """Load what is heavy now rather than on first use (idempotent)."""

    async def aclose(self) -> None:  # noqa: B027 - nothing to release by default
        """Release models and connections."""
