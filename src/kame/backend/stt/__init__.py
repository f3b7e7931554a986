"""Streaming speech-to-text: one interface (``base``), one module per engine, chosen by a spec string.

``create_stt("whisper")`` (default: the embedded tiny.en), ``"whisper:small.en"`` or
``"whisper:/path/to/ct2-model"``, ``"pocketsphinx"``, ``"kyutai"`` or ``"kyutai:REPO_OR_FOLDER"``.
Engines are imported only when asked for, so a machine without torch's GPU stack can still run Whisper.
"""

from __future__ import annotations

from typing import Any

from kame.backend.stt.base import (
    StreamOptions,
    STTEngine,
    STTError,
    STTStats,
    STTStream,
    Transcript,
    Word,
)

ENGINES = ("whisper", "pocketsphinx", "kyutai")
DEFAULT_STT = "whisper"


def create_stt(spec: str = DEFAULT_STT, **options: Any) -> STTEngine:
    """An engine from ``NAME[:MODEL]``; ``options`` are fields of its config dataclass."""
    name, _, model = spec.partition(":")
    name = name.strip().lower()
    if model:
        options = {**options, "model": model}
    if name == "whisper":
        from kame.backend.stt.whisper import WhisperConfig, WhisperSTT

        return WhisperSTT(_config(WhisperConfig, options, spec))
    if name == "pocketsphinx":
        from kame.backend.stt.pocketsphinx import PocketSphinxConfig, PocketSphinxSTT

        if "model" in options:
            options["hmm"] = options.pop("model")
        return PocketSphinxSTT(_config(PocketSphinxConfig, options, spec))
    if name == "kyutai":
        from kame.backend.stt.kyutai import KyutaiConfig, KyutaiSTT

        return KyutaiSTT(_config(KyutaiConfig, options, spec))
    raise STTError(f"unknown STT engine {spec!r}; choose one of {', '.join(ENGINES)} (e.g. whisper:small.en)")


def _config(cls: type, options: dict[str, Any], spec: str) -> Any:
    try:
        return cls(**options)
    except TypeError as exc:
        fields = ", ".join(cls.__dataclass_fields__)
        raise STTError(f"{spec}: bad option ({exc}); {cls.__name__} takes {fields}") from exc


__all__ = [
    "DEFAULT_STT",
    "ENGINES",
    "STTEngine",
    "STTError",
    "STTStats",
    "STTStream",
    "StreamOptions",
    "Transcript",
    "Word",
    "create_stt",
]
