"""``pocketsphinx``: a truly streaming recognizer, light enough for any CPU, its model in the wheel.

PocketSphinx decodes frame by frame, so a partial costs nothing extra: the current best hypothesis is
read every ``partial_interval_s`` of speech and sent when it changed. Its accuracy is far below
Whisper's (measured: WER about 14 % on Piper speech, 65 % on espeak-ng), which makes it the engine for
plumbing, very small machines and latency floors rather than for answers. Utterances are cut by the
Silero VAD (see ``segmented``); word times come from the decoder's segmentation (100 frames a second).

A decoder holds its own copy of the models: about 96 MB, and 0.2 s to load, measured here. So a closed
stream hands its decoder back to the engine, which keeps up to ``idle_decoders`` of them for the next
sessions, instead of leaving it to die with the stream: a closed session is freed by Python's cyclic
collector, which may run many sessions later (a 4-minute soak's server grew by 500 MB a minute).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
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

FRAME_RATE = 100  # PocketSphinx frames per second (its default -frate)
_ALTERNATE = re.compile(r"\(\d+\)$")  # "the(2)": the second pronunciation of "the"


@dataclass
class PocketSphinxConfig:
    hmm: str | None = None  # acoustic model folder; None: the en-us model shipped in the wheel
    lm: str | None = None  # language model; None: the wheel's en-us LM
    dict: str | None = None  # pronunciation dictionary; None: the wheel's CMUdict
    partial_interval_s: float = 0.2  # seconds of speech between two reads of the hypothesis
    idle_decoders: int = 4  # decoders of closed streams kept for the next ones
    vad: VADConfig = field(default_factory=VADConfig)

    def __post_init__(self) -> None:
        if self.partial_interval_s <= 0:
            raise ValueError(f"partial_interval_s must be > 0, got {self.partial_interval_s}")
        if self.idle_decoders < 0:
            raise ValueError(f"idle_decoders must be >= 0, got {self.idle_decoders}")


class PocketSphinxSTT(STTEngine):
    """Each stream gets a decoder of its own (PocketSphinx decoders are not shareable between threads),
    a recycled one when a closed stream left one."""

    name = "pocketsphinx"
    sample_rate = SAMPLE_RATE

    def __init__(self, config: PocketSphinxConfig | None = None) -> None:
        self.config = config or PocketSphinxConfig()
        self._vad_model: SileroModel | None = None
        self._lock = threading.Lock()
        self._idle: list[Any] = []  # decoders between utterances, ready for a new stream

    def load_blocking(self) -> None:
        with self._lock:
            if self._vad_model is None:
                self._vad_model = SileroModel()

    def decoder_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"samprate": SAMPLE_RATE, "loglevel": "FATAL"}
        for key in ("hmm", "lm", "dict"):
            value = getattr(self.config, key)
            if value is not None:
                kwargs[key] = value
        return kwargs

    def new_decoder(self) -> Any:
        """An idle decoder if there is one, else a freshly loaded one."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        from pocketsphinx import Decoder

        try:
            return Decoder(**self.decoder_kwargs())
        except (ValueError, RuntimeError) as exc:
            raise STTError(
                f"pocketsphinx: cannot create a decoder with {self.decoder_kwargs()} ({exc}); check the "
                "hmm/lm/dict paths, or leave them unset for the en-us model shipped in the wheel"
            ) from exc

    def recycle(self, decoder: Any) -> None:
        """Keep a closed stream's decoder (not inside an utterance) for the next stream, if room."""
        with self._lock:
            if len(self._idle) < self.config.idle_decoders:
                self._idle.append(decoder)

    @property
    def idle_decoders(self) -> int:
        return len(self._idle)

    def close_blocking(self) -> None:
        with self._lock:
            self._idle.clear()

    def open_stream(
        self, session: str = "session", options: StreamOptions | None = None
    ) -> PocketSphinxStream:
        self.load_blocking()
        if self._vad_model is None:
            raise STTError("pocketsphinx: the VAD model did not load")
        return PocketSphinxStream(self, self._vad_model, session, options)


class PocketSphinxStream(VADSegmentedStream):
    def __init__(
        self, engine: PocketSphinxSTT, vad_model: SileroModel, session: str, options: StreamOptions | None
    ) -> None:
        super().__init__(engine.config.vad, vad_model, session, options)
        self.engine = engine
        self._decoder = engine.new_decoder()
        self._interval = max(1, int(engine.config.partial_interval_s * SAMPLE_RATE) // BLOCK) * BLOCK
        self._since_read = 0
        self._start_s = 0.0
        self._last_text = ""
        self._previous: list[Word] = []
        self._emitted = False

    def _free(self) -> None:
        decoder, self._decoder = self._decoder, None
        if decoder is None or self.error is not None:
            return  # a decoder that failed is not trusted with another session
        if self.in_utterance:
            self.in_utterance = False
            try:
                decoder.end_utt()  # closed mid-utterance: its words are dropped, as aclose promises
            except RuntimeError:
                return
        self.engine.recycle(decoder)

    def _feed(self, audio: np.ndarray) -> None:
        pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
        self._decoder.process_raw(pcm.tobytes(), False, False)

    def _words(self) -> list[Word]:
        words = []
        for segment in self._decoder.seg():
            text = _ALTERNATE.sub("", segment.word)
            if not text or text.startswith(("<", "[", "+")):
                continue  # <s>, </s>, <sil>, [NOISE], ++FILLER++
            start = self._start_s + segment.start_frame / FRAME_RATE
            end = self._start_s + (segment.end_frame + 1) / FRAME_RATE
            words.append(Word(text, round(start, 3), round(end, 3)))
        return words

    def _on_start(self, audio: np.ndarray, start_s: float) -> Iterable[Transcript]:
        self._decoder.start_utt()
        self._start_s = start_s
        self._last_text = ""
        self._previous: list[Word] = []
        self._emitted = False
        self._since_read = audio.size
        self._feed(audio)
        return []

    def _on_audio(self, block: np.ndarray, behind: int) -> Iterable[Transcript]:
        self._feed(block)
        self._since_read += block.size
        if self._since_read < self._interval or behind >= self._interval:
            return []
        self._since_read = 0
        self.stats.decodes += 1
        words = self._words()
        text = words_text(words)
        if not text or text == self._last_text:
            return []
        self._last_text = text
        self._emitted = True
        stable = common_prefix(self._previous, words)
        self._previous = words
        return [Transcript("partial", text, tuple(words), self.utterance, self.heard_s, stable)]

    def _on_end(self) -> Iterable[Transcript]:
        self._decoder.end_utt()
        self.stats.decodes += 1
        words = self._words()
        if not words and not self._emitted:
            return []
        text = words_text(words)
        return [Transcript("final", text, tuple(words), self.utterance, self.heard_s, len(words))]
