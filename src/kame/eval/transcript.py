"""What a reply said, with each word's start and end on the conversation's clock.

Two sources, as the report states which: the reply's audio transcribed by Whisper with word times
(``audio``, what the paper did: it judges what a listener heard), or the system's own text stream
(``text``: the front-end's inner monologue, the cascade's spoken LLM text), which is what works with
the offline random front-end, whose voice is noise. Text-stream words are timed by the timing
convention: a piece produced by the step that consumed input frame ``s`` is heard from ``80 (s + 1)`` ms.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from kame.audio.io import resample
from kame.frames import FRAME_S, SAMPLE_RATE

TRANSCRIPT_SOURCES = ("audio", "text")


@dataclass(frozen=True)
class TimedWord:
    text: str
    start: float  # seconds on the conversation's clock (the input's)
    end: float

    def to_json(self) -> list[Any]:
        return [self.text, round(self.start, 3), round(self.end, 3)]


class TextStreamRecorder:
    """A session output that keeps the text pieces with the frame that produced them.

    ``on_audio`` arrives once per step before that step's text, so the step count dates each piece.
    ``whole_words``: each piece is a whole word (the cascade sends one per played word).
    """

    def __init__(self, *, whole_words: bool = False) -> None:
        self.whole_words = whole_words
        self.steps = 0
        self.pieces: list[tuple[int, str]] = []  # (step count after the piece's step, piece)

    def on_audio(self, pcm: np.ndarray) -> None:
        self.steps += 1

    def on_text(self, piece: str) -> None:
        self.pieces.append((self.steps, piece))

    def on_event(self, event: dict[str, Any]) -> None:
        pass

    def words(self) -> list[TimedWord]:
        """Words as the front-end's text stream spelled them: a piece with a leading space starts one."""
        words: list[TimedWord] = []
        text, start, last = "", 0.0, 0.0
        for steps, piece in self.pieces:
            at = steps * FRAME_S  # the step's audio is heard from here (kame.frames.place_reply)
            if (piece.startswith(" ") or self.whole_words) and text.strip():
                words.append(TimedWord(text.strip(), start, last + FRAME_S))
                text = ""
            if not text.strip():
                start = at
            text += piece
            last = at
        if text.strip():
            words.append(TimedWord(text.strip(), start, last + FRAME_S))
        return words


# faster-whisper's word times put the first word at the start of the window (0.0 s before 1.26 s of
# silence, measured on Piper speech); its Silero VAD filter restores the real onset, to within 10 ms with
# 30 ms of padding around speech (its default 400 ms moves the onset 0.4 s early).
VAD_PARAMETERS = {"speech_pad_ms": 30}


class ReplyTranscriber:
    """Whisper (faster-whisper) with word timestamps over a reply's audio; one model, thread-safe."""

    def __init__(self, model: str = "embedded", device: str = "cpu") -> None:
        from kame.backend.stt.whisper import WhisperConfig, WhisperSTT

        self.model_path = WhisperSTT(WhisperConfig(model=model)).model_path
        self.device = device
        self._model: Any = None
        self._lock = threading.Lock()

    def _whisper(self) -> Any:
        with self._lock:
            if self._model is None:
                from faster_whisper import WhisperModel

                compute = "int8" if self.device == "cpu" else "float16"
                self._model = WhisperModel(
                    self.model_path, device=self.device, compute_type=compute, cpu_threads=1
                )
            return self._model

    def words(self, audio: np.ndarray, offset: float = 0.0) -> list[TimedWord]:
        """The words in ``audio`` (24 kHz), timed from ``offset`` seconds."""
        if not np.any(np.abs(audio) > 1e-4):
            return []
        clip = resample(audio, SAMPLE_RATE, 16000)
        segments, _ = self._whisper().transcribe(
            clip, language="en", beam_size=1, word_timestamps=True, condition_on_previous_text=False,
            vad_filter=True, vad_parameters=VAD_PARAMETERS,
        )  # fmt: skip
        return [
            TimedWord(w.word.strip(), offset + float(w.start), offset + float(w.end))
            for segment in segments
            for w in (segment.words or [])
            if w.word.strip()
        ]


def words_in(words: list[TimedWord], start: float, end: float | None) -> list[TimedWord]:
    """The words that begin in ``[start, end)`` (``end`` None: to the end)."""
    return [w for w in words if w.start >= start and (end is None or w.start < end)]


def join_words(words: list[TimedWord]) -> str:
    return " ".join(w.text for w in words)
