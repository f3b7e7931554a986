"""Shared TTS test helpers: engines built once per session, and Whisper word times to compare against."""

from __future__ import annotations

import numpy as np
import pytest

from kame.audio.io import resample


@pytest.fixture(scope="session")
def piper():
    from kame.audio.tts import create_tts

    return create_tts("piper")


@pytest.fixture(scope="session")
def espeak():
    from kame.audio.tts import create_tts

    return create_tts("espeak")


@pytest.fixture(scope="session")
def whisper_words():
    """audio, rate -> [(word, start, end)] from the embedded Whisper tiny.en (an independent clock)."""
    from faster_whisper import WhisperModel

    from kame.backend.stt.whisper import embedded_model_path

    model = WhisperModel(str(embedded_model_path()), device="cpu", compute_type="int8", cpu_threads=1)

    def transcribe(audio: np.ndarray, rate: int) -> list[tuple[str, float, float]]:
        segments, _ = model.transcribe(resample(audio, rate, 16000), language="en", word_timestamps=True)
        return [(w.word.strip(), w.start, w.end) for s in segments for w in (s.words or [])]

    return transcribe
