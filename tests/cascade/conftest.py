"""Shared parts of the cascade tests: the speech helper and the scripted LLM servers, loaded models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "backend"))  # backend_speech: questions spoken by Piper / espeak-ng
sys.path.insert(0, str(TESTS / "llm"))  # llm_servers: real HTTP servers speaking the OpenAI protocol


@pytest.fixture(scope="session")
def whisper():
    """The embedded Whisper tiny.en, loaded once (sessions share it, as the server's do)."""
    from kame.backend.stt import create_stt

    engine = create_stt("whisper")
    engine.load_blocking()
    return engine


@pytest.fixture(scope="session")
def piper():
    from kame.audio.tts import create_tts

    return create_tts("piper")


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2 (``local``): loaded on its first request, shared by the tests."""
    from kame.backend.llm import create_llm

    return create_llm("local")
