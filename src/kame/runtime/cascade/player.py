"""The reply's audio, played out one 80 ms frame per tick of the frame clock, so what was heard is known.

Synthesised chunks are queued with their word times; each ``next_frame`` hands out the next 1920 samples
(silence when nothing is queued) and the words whose start fell inside them: those have been played.
``stop`` (barge-in) drops whatever was not played yet, at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from kame.audio.tts import WordTiming
from kame.frames import FRAME_SIZE, SAMPLE_RATE


@dataclass
class PlayedFrame:
    pcm: np.ndarray  # FRAME_SIZE samples at 24 kHz
    words: list[str] = field(default_factory=list)  # words whose start is in this frame
    audio: bool = False  # it carried reply audio (not only silence)


@dataclass
class _Chunk:
    audio: np.ndarray
    words: deque[tuple[int, str]]  # (start sample within the chunk, word)
    position: int = 0


class ReplyPlayer:
    """A FIFO of synthesised chunks drained at the frame clock's pace (24 kHz)."""

    def __init__(self) -> None:
        self._chunks: deque[_Chunk] = deque()
        self.played_samples = 0  # reply audio handed out since the last ``stop``/``reset``
        self.underruns = 0  # frames that fell silent mid-reply, waiting for the TTS

    def enqueue(self, audio: np.ndarray, words: list[WordTiming]) -> None:
        """A chunk of 24 kHz audio and its words' times (seconds from the chunk's start)."""
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"reply audio must be mono, got shape {audio.shape}")
        last = max(0, len(audio) - 1)
        starts = deque((min(last, max(0, round(w.start * SAMPLE_RATE))), w.word) for w in words)
        self._chunks.append(_Chunk(audio, starts))

    @property
    def queued_samples(self) -> int:
        return sum(len(c.audio) - c.position for c in self._chunks)

    @property
    def has_audio(self) -> bool:
        return self.queued_samples > 0

    def next_frame(self) -> PlayedFrame:
        pcm = np.zeros(FRAME_SIZE, dtype=np.float32)
        filled = 0
        words: list[str] = []
        while filled < FRAME_SIZE and self._chunks:
            chunk = self._chunks[0]
            take = min(FRAME_SIZE - filled, len(chunk.audio) - chunk.position)
            pcm[filled : filled + take] = chunk.audio[chunk.position : chunk.position + take]
            end = chunk.position + take
            while chunk.words and chunk.words[0][0] < end:
                words.append(chunk.words.popleft()[1])
            chunk.position = end
            filled += take
            if chunk.position >= len(chunk.audio):
                words.extend(word for _, word in chunk.words)  # words timed past the audio's end
                self._chunks.popleft()
        self.played_samples += filled
        return PlayedFrame(pcm, words, filled > 0)

    def stop(self) -> int:
        """Drop every sample not played yet; returns how many were dropped."""
        dropped = self.queued_samples
        self._chunks.clear()
        return dropped

    def reset(self) -> None:
        self.stop()
        self.played_samples = 0
