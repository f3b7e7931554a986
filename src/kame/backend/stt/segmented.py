"""Utterances cut by voice activity, for recognizers that transcribe but cannot tell when speech ends.

``VADSegmentedStream`` runs the Silero VAD over the stream's audio, keeps a short pre-roll, and turns
speech into utterances: the engine is told when one starts (with the pre-roll), gets every 32 ms block
of it together with how far the worker is behind the live edge (so it can skip decodes under load),
and produces the final when the VAD hears ``min_silence_s`` of silence or the input ends.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import deque
from collections.abc import Iterable
from dataclasses import replace

import numpy as np

from kame.backend.stt.base import StreamOptions, ThreadedSTTStream, Transcript
from kame.backend.stt.vad import BLOCK, SAMPLE_RATE, SileroModel, SileroVAD, VADConfig


class VADSegmentedStream(ThreadedSTTStream):
    """A 16 kHz stream whose utterances are delimited by the Silero VAD."""

    def __init__(
        self,
        vad_config: VADConfig,
        vad_model: SileroModel,
        session: str = "session",
        options: StreamOptions | None = None,
    ) -> None:
        super().__init__(SAMPLE_RATE, session, options)
        self.vad = SileroVAD(vad_config, vad_model)
        pre_roll_blocks = max(1, round(vad_config.pre_roll_s * SAMPLE_RATE / BLOCK))
        self._pre_roll: deque[np.ndarray] = deque(maxlen=pre_roll_blocks)
        self._offset = 0  # samples of session audio before the VAD's position 0 (dropped audio)
        self.utterance = -1  # index of the current (or last) utterance
        self.in_utterance = False
        self._cursor = 0  # VAD position of the end of the block being handled

    @property
    def turn_end_reason(self) -> str:
        return "vad_silence"

    @property
    def end_silence_s(self) -> float | None:
        return self.vad.config.min_silence_s

    def set_end_silence(self, seconds: float) -> None:
        self.vad.config = replace(self.vad.config, min_silence_s=seconds)  # the engine's config is shared

    def seconds(self, vad_sample: int) -> float:
        """Session seconds of a VAD sample position."""
        return (vad_sample + self._offset) / SAMPLE_RATE

    @property
    def heard_s(self) -> float:
        """Session seconds of audio up to the end of the block being handled."""
        return self.seconds(self._cursor)

    def _process(self, audio: np.ndarray, finished: bool, gap: int) -> Iterable[Transcript]:
        out: list[Transcript] = []
        if gap:
            if self.in_utterance:
                out.extend(self._close_utterance())
            self._offset += gap
        steps = self.vad.process(audio)
        backlog = self._backlog_samples()
        for index, step in enumerate(steps):
            behind = (len(steps) - 1 - index) * BLOCK + backlog
            event = step.event
            self._cursor = step.end
            if event is not None and event.kind == "start":
                self.utterance += 1
                self.in_utterance = True
                pre_roll = list(self._pre_roll)
                self._pre_roll.clear()
                start_sample = step.end - BLOCK * (len(pre_roll) + 1)
                first = np.concatenate([*pre_roll, step.block])
                out.extend(self._on_start(first, self.seconds(start_sample)))
            elif self.in_utterance:
                out.extend(self._on_audio(step.block, behind))
            else:
                self._pre_roll.append(step.block)
            if event is not None and event.kind == "end" and self.in_utterance:
                out.extend(self._close_utterance())
        self._cursor = self.vad.position
        if finished and self.in_utterance:
            out.extend(self._close_utterance())
        return out

    def _close_utterance(self) -> list[Transcript]:
        self.in_utterance = False
        return list(self._on_end())

    @abstractmethod
    def _on_start(self, audio: np.ndarray, start_s: float) -> Iterable[Transcript]:
        """An utterance begins at session second ``start_s`` with ``audio`` (pre-roll + first block)."""

    @abstractmethod
    def _on_audio(self, block: np.ndarray, behind: int) -> Iterable[Transcript]:
        """The next block of the utterance; ``behind``: samples already received after it."""

    @abstractmethod
    def _on_end(self) -> Iterable[Transcript]:
        """The utterance is over: return its final (or nothing if nothing was recognized)."""
