"""Fixtures of the back-end tests: speech made on the spot, a loaded Whisper, a loaded local LLM."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # backend_speech

import backend_speech  # noqa: E402


@pytest.fixture(scope="session")
def whisper_engine():
    from kame.backend.stt import create_stt

    engine = create_stt("whisper")
    engine.load_blocking()
    yield engine
    engine.close_blocking()


@pytest.fixture(scope="session")
def piper_three():
    """Three Piper questions in one recording: (audio, rate, utterances, start seconds)."""
    return backend_speech.conversation(backend_speech.QUESTIONS[:3], "piper")


@pytest.fixture(scope="session")
def espeak_three():
    return backend_speech.conversation(backend_speech.QUESTIONS[3:6], "espeak")


@pytest.fixture(scope="session")
def local_llm():
    """The embedded SmolLM2 through llama.cpp (the other engineer's ``local`` provider)."""
    llm_module = pytest.importorskip("kame.backend.llm")
    if not hasattr(llm_module, "create_llm"):
        pytest.skip("kame.backend.llm.create_llm has not landed yet")
    return llm_module.create_llm("local")
