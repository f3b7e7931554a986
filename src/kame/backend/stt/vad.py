"""Voice activity: where an utterance starts and ends, for recognizers that cannot tell by themselves.

Whisper and PocketSphinx only transcribe; this module decides when the user started speaking (begin an
utterance) and when they stopped (emit the final). It runs the Silero VAD model shipped inside the
``silero-vad`` wheel directly on onnxruntime (no torch): 32 ms blocks of 16 kHz audio, about 0.3 ms each,
with hysteresis (start above ``threshold``, end after ``min_silence_s`` below ``threshold - 0.15``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from kame.errors import UserError

SAMPLE_RATE = 16000
BLOCK = 512  # samples per Silero block at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous block the model sees in front of each block
MODEL_FILE = "silero_vad.onnx"


class VADError(UserError, RuntimeError):
    """The VAD model cannot be found or run; the message says what to install."""


@dataclass
class VADConfig:
    threshold: float = 0.5  # speech probability that starts speech
    negative_threshold: float | None = None  # below this counts as silence (default threshold - 0.15)
    min_speech_s: float = 0.064  # this much speech in a row starts an utterance (filters clicks)
    min_silence_s: float = 0.5  # this much silence in a row ends it
    pre_roll_s: float = 0.25  # audio kept from before the detected start (the onset of the first word)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"VAD threshold must be between 0 and 1, got {self.threshold}")
        if self.min_silence_s <= 0 or self.min_speech_s < 0 or self.pre_roll_s < 0:
            raise ValueError("VAD durations must be positive (min_silence_s > 0, others >= 0)")

    @property
    def silence_threshold(self) -> float:
        if self.negative_threshold is not None:
            return self.negative_threshold
        return max(0.01, self.threshold - 0.15)


@dataclass(frozen=True)
class VADEvent:
    kind: Literal["start", "end"]
    sample: int  # position in the stream (16 kHz samples) where speech started / the silence began


@dataclass(frozen=True)
class VADStep:
    """One 32 ms block: its samples, where it ends in the stream, its speech probability, any event."""

    block: np.ndarray
    end: int
    prob: float
    event: VADEvent | None


def silero_model_path() -> Path:
    """The ONNX model inside the installed ``silero-vad`` package (found without importing torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise VADError("the silero-vad package is not installed: pip install silero-vad")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / MODEL_FILE
    if not path.is_file():
        raise VADError(f"{path} is missing; reinstall silero-vad")
    return path


class SileroModel:
    """The ONNX session; stateless itself (each ``SileroVAD`` keeps its own recurrent state)."""

    def __init__(self, path: str | Path | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        self.path = Path(path) if path else silero_model_path()
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise VADError(f"cannot load the Silero VAD model {self.path}: {exc}") from exc
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def run(self, block: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """Speech probability of one block (``CONTEXT + BLOCK`` samples) and the next state."""
        out, new_state = self.session.run(None, {"input": block[None, :], "state": state, "sr": self._sr})
        return float(out[0, 0]), new_state


class SileroVAD:
    """Streaming speech start/end detection over 16 kHz audio of any chunking."""

    def __init__(self, config: VADConfig | None = None, model: SileroModel | None = None) -> None:
        self.config = config or VADConfig()
        self.model = model or SileroModel()
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._rest = np.zeros(0, dtype=np.float32)
        self.position = 0  # samples consumed into full blocks
        self.in_speech = False
        self._speech_run = 0  # samples of speech in a row (before a start)
        self._speech_run_start = 0
        self._silence_run = 0  # samples of silence in a row (during speech)
        self._silence_start = 0
        self.last_prob = 0.0

    def process(self, audio: np.ndarray) -> list[VADStep]:
        """Feed audio; returns one step per full 32 ms block. A partial block waits for the next call."""
        audio = np.concatenate([self._rest, np.asarray(audio, dtype=np.float32)])
        results: list[VADStep] = []
        n_blocks = audio.size // BLOCK
        for index in range(n_blocks):
            block = audio[index * BLOCK : (index + 1) * BLOCK]
            prob, self._state = self.model.run(np.concatenate([self._context, block]), self._state)
            self._context = block[-CONTEXT:].copy()
            start = self.position
            self.position += BLOCK
            self.last_prob = prob
            results.append(VADStep(block, self.position, prob, self._update(prob, start)))
        self._rest = audio[n_blocks * BLOCK :].copy()
        return results

    def _update(self, prob: float, block_start: int) -> VADEvent | None:
        config = self.config
        if not self.in_speech:
            if prob >= config.threshold:
                if self._speech_run == 0:
                    self._speech_run_start = block_start
                self._speech_run += BLOCK
                if self._speech_run >= config.min_speech_s * SAMPLE_RATE:
                    self.in_speech = True
                    self._silence_run = 0
                    self._speech_run = 0
                    return VADEvent("start", self._speech_run_start)
            else:
                self._speech_run = 0
            return None
        if prob < config.silence_threshold:
            if self._silence_run == 0:
                self._silence_start = block_start
            self._silence_run += BLOCK
            if self._silence_run >= config.min_silence_s * SAMPLE_RATE:
                self.in_speech = False
                self._silence_run = 0
                return VADEvent("end", self._silence_start)
        else:
            self._silence_run = 0
        return None
