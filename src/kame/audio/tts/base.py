"""The interface every TTS engine implements: text in, audio plus per-word start/end times out.

Word times are what Simulated Oracle Augmentation and the tests need: when each word of a question was
heard decides what a real back-end could have known at that moment.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from kame.errors import ProviderError
from kame.lifecycle import Engine


class TTSError(ProviderError, RuntimeError):
    """Synthesis failed (missing voice, engine error, empty text); the message says which and why."""

    provider = "tts"


@dataclass
class WordTiming:
    word: str
    start: float  # seconds from the start of the audio
    end: float


@dataclass
class Speech:
    audio: np.ndarray  # float32 mono
    sample_rate: int
    words: list[WordTiming] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


class TTSEngine(Engine, ABC):
    """A text-to-speech engine; ``synthesize`` is blocking (run it in a thread from async code)."""

    name: str = "tts"

    @abstractmethod
    def synthesize(self, text: str, *, voice: str | None = None, rate: float = 1.0) -> Speech:
        """Speak ``text``; ``rate`` > 1 speaks faster. Raises TTSError.

        ``Speech.words`` lists every word of ``spoken_words(text)`` in order with its start and end, or
        is empty when the engine could not align this text (callers then align with an STT).
        """

    def voices(self) -> list[str | None]:
        """Voices to draw from for variety (None = the engine's default voice)."""
        return [None]
