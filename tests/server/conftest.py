"""Fixtures shared by the server tests."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile as sf

from kame.audio.io import resample


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    """A real spoken question (espeak-ng) at 24 kHz, followed by 1.5 s of silence."""
    path = "/tmp/kame-test-question.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", path, "What is the capital of France?"], check=True)
    audio, rate = sf.read(path, dtype="float32")
    audio = resample(audio, rate, 24000)
    return np.concatenate([audio, np.zeros(int(1.5 * 24000), np.float32)])
