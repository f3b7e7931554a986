"""Reading and writing audio files, and resampling to the rates the models need.

Everything inside kame is float32 mono; any file a user brings (any rate, any channel count) is mixed
down and resampled here, at the edge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from kame.errors import UserError
from kame.frames import SAMPLE_RATE


class AudioFormatError(UserError, ValueError):
    """An audio file or buffer that cannot be used; the message says what is wrong with it."""


def to_mono(audio: np.ndarray) -> np.ndarray:
    """[T] or [T, C] -> [T] float32 (channels averaged)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.ndim != 1:
        raise AudioFormatError(f"expected mono [T] or interleaved [T, C] audio, got shape {audio.shape}")
    return np.ascontiguousarray(audio, dtype=np.float32)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """High-quality resampling (soxr) of mono float32 audio."""
    if from_rate <= 0 or to_rate <= 0:
        raise AudioFormatError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    audio = np.asarray(audio, dtype=np.float32)
    if from_rate == to_rate or audio.size == 0:
        return audio
    return soxr.resample(audio, from_rate, to_rate).astype(np.float32, copy=False)


class StreamResampler:
    """Streaming resampling of float32 mono to ``to_rate``, chunk by chunk with no clicks at chunk
    boundaries; a change of input rate starts a new stream."""

    def __init__(self, to_rate: int) -> None:
        self.to_rate = to_rate
        self.from_rate: int | None = None
        self._stream: soxr.ResampleStream | None = None

    def __call__(self, audio: np.ndarray, rate: int) -> np.ndarray:
        if rate <= 0:
            raise ValueError(f"sample rate must be positive, got {rate}")
        if rate != self.from_rate:
            self.from_rate = rate
            self._stream = (
                None if rate == self.to_rate else soxr.ResampleStream(rate, self.to_rate, 1, dtype="float32")
            )
        if self._stream is None:
            return audio
        return self._stream.resample_chunk(audio)

    def flush(self) -> np.ndarray:
        """The resampler's delayed tail; the resampler is then released."""
        stream, self._stream, self.from_rate = self._stream, None, None
        if stream is None:
            return np.zeros(0, np.float32)
        return stream.resample_chunk(np.zeros(0, np.float32), last=True)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any file libsndfile knows, as float32 mono at ``sample_rate``."""
    path = Path(path)
    if not path.is_file():
        raise AudioFormatError(f"{path}: no such audio file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioFormatError(f"{path}: not a readable audio file ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioFormatError(f"{path}: the file holds no audio")
    return resample(to_mono(data), rate, sample_rate)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write float32 mono audio as 16-bit PCM WAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(
        str(path), np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16"
    )
    return path
