"""One conversation: a slot in the batched front-end plus its own back-end, tied by one timeline.

Audio flows in through ``push_audio`` (from a WebSocket or a recording) to both the front-end's input
buffer and the STT; the back-end's oracle events reach the front-end at frame boundaries; what the
front-end produces (80 ms of audio, a text piece) comes back on the event loop and goes to the client,
and the assistant's words feed the back-end's conversation history. A failing back-end never touches
the frame clock: its errors are timeline events.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kame.audio.io import AudioFormatError, StreamResampler, to_mono
from kame.events import (
    ORACLE_TIMELINE_EVENTS,
    AssistantSaid,
    AssistantWord,
    LiveEvent,
    LLMFirstToken,
    OracleApplied,
    SessionEnd,
    SessionStart,
    WireEvent,
    live_events,
    live_types,
)
from kame.frames import SAMPLE_RATE
from kame.oracle import OracleOp
from kame.runtime.backend import Backend, SessionBackend
from kame.runtime.scheduler import SlotFrame, Stepper
from kame.timeline import Clock, Event, Timeline

logger = logging.getLogger(__name__)


class SessionOutput(Protocol):
    """Where a session's products go (a WebSocket, a file); all called on the event loop."""

    def on_audio(self, pcm: np.ndarray) -> None: ...

    def on_text(self, piece: str) -> None: ...

    def on_event(self, event: WireEvent | LiveEvent) -> None: ...


class NullOutput:
    def on_audio(self, pcm: np.ndarray) -> None:
        pass

    def on_text(self, piece: str) -> None:
        pass

    def on_event(self, event: WireEvent | LiveEvent) -> None:
        pass


@dataclass
class SessionConfig:
    max_backlog_s: float = 0.5  # user audio waiting for the frame clock beyond this is dropped


@dataclass
class SessionMetrics:
    """Per-session counters; ``snapshot`` is what clients and /metrics see."""

    frames: int = 0
    deadline_misses: int = 0
    input_underruns: int = 0  # frames stepped on silence because no user audio had arrived
    input_dropped_s: float = 0.0  # user audio dropped to keep latency bounded
    oracle_events: int = 0
    assistant_words: int = 0
    step_s: deque[float] = field(default_factory=lambda: deque(maxlen=250))
    oracle_lag_s: deque[float] = field(default_factory=lambda: deque(maxlen=100))  # emitted -> fed
    llm_ttft_s: deque[float] = field(default_factory=lambda: deque(maxlen=100))

    def snapshot(self) -> dict[str, Any]:
        def median_ms(values: deque[float]) -> float | None:
            return round(float(np.median(list(values))) * 1e3, 1) if values else None

        return {
            "frames": self.frames,
            "deadline_misses": self.deadline_misses,
            "late_frame_pct": round(100 * self.deadline_misses / self.frames, 2) if self.frames else 0.0,
            "input_underruns": self.input_underruns,
            "input_dropped_s": round(self.input_dropped_s, 3),
            "oracle_events": self.oracle_events,
            "assistant_words": self.assistant_words,
            "step_ms": median_ms(self.step_s),
            "oracle_lag_ms": median_ms(self.oracle_lag_s),
            "llm_ttft_ms": median_ms(self.llm_ttft_s),
        }


class Session:
    """Create, ``await start()``, ``push_audio`` as it arrives, ``await close()``."""

    def __init__(
        self,
        session_id: str,
        stepper: Stepper,
        backend: Backend | None,
        *,
        output: SessionOutput | None = None,
        clock: Clock | None = None,
        timeline_path: str | None = None,
        config: SessionConfig | None = None,
    ) -> None:
        self.id = session_id
        self.stepper = stepper
        self.config = config or SessionConfig()
        self.output: SessionOutput = output or NullOutput()
        self.timeline = Timeline(session_id, path=timeline_path, **({"clock": clock} if clock else {}))
        self.metrics = SessionMetrics()
        self.slot: int | None = None
        self._backend = backend
        self.back: SessionBackend | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resampler = StreamResampler(SAMPLE_RATE)
        self._closed = False
        self.audio_out: list[np.ndarray] = []  # kept when ``keep_audio`` (offline simulation)
        self.keep_audio = False
        self._unsubscribe = self.timeline.subscribe(self._observe, LLMFirstToken, *live_events())

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._backend is not None:
            self.back = self._backend.open_session(self.id, self.timeline, self._on_oracle)
            await self.back.start()
        self.slot = await self.stepper.join(self, self.config.max_backlog_s)
        self.timeline.emit(SessionStart(details={"slot": self.slot}))

    async def close(self, reason: str = "closed") -> None:
        if self._closed:
            return
        self._closed = True
        if self.slot is not None:
            self.stepper.leave(self.slot)
        if self.back is not None:
            try:
                await self.back.aclose()
            except Exception:  # noqa: BLE001 - closing must finish whatever the back-end does
                logger.exception("session %s: closing the back-end failed", self.id)
        self.timeline.emit(SessionEnd(details={"reason": reason, **self.metrics.snapshot()}))
        self._unsubscribe()
        self.timeline.close()

    # -- user audio (event loop) --------------------------------------------------------------------
    def push_audio(self, pcm: np.ndarray, sample_rate: int) -> None:
        """User audio of any rate; goes to the front-end's buffer (24 kHz) and to the STT."""
        if self._closed:
            return
        pcm = to_mono(pcm)
        if not np.all(np.isfinite(pcm)):
            raise AudioFormatError("audio contains NaN or infinite samples")
        model_pcm = self._resampler(pcm, sample_rate)
        if self.back is not None:
            self.back.stream.push(pcm, sample_rate)
        self.timeline.add_audio(len(pcm) / sample_rate, record=False)
        if self.slot is not None:
            self.stepper.push_audio(self.slot, model_pcm)

    # -- the frame clock's side (its thread, or the thread receiving a child process's results) -------
    def deliver(self, frame: SlotFrame, step_s: float, late: bool) -> None:
        metrics = self.metrics
        metrics.frames += 1
        metrics.step_s.append(step_s)
        metrics.deadline_misses += late
        metrics.input_underruns += frame.underrun
        metrics.input_dropped_s += frame.dropped_s
        if self._loop is not None and not self._closed:
            self._loop.call_soon_threadsafe(self._on_frame, frame)

    # -- results (event loop) -----------------------------------------------------------------------
    def _on_frame(self, frame: SlotFrame) -> None:
        if self._closed:
            return
        for applied in frame.applied:
            lag = max(0.0, self.timeline.now() - applied.emitted_t)
            self.metrics.oracle_lag_s.append(lag)
            self.timeline.emit(
                OracleApplied(
                    kind=applied.kind, stream=applied.stream_id, frame=applied.frame, lag=round(lag, 4),
                    late_tokens=applied.late_tokens,
                )
            )  # fmt: skip
        self.output.on_audio(frame.pcm)
        if self.keep_audio:
            self.audio_out.append(frame.pcm)
        for word in frame.words:
            self._said(word)
        if frame.piece:
            self.output.on_text(frame.piece)

    def _said(self, word: str) -> None:
        self.metrics.assistant_words += 1
        self.timeline.emit(AssistantWord(text=word))
        if self.back is not None:
            self.back.engine.add_assistant_text(word)
        self.output.on_event(AssistantSaid(text=word, t=round(self.timeline.now(), 3)))

    def _on_oracle(self, op: OracleOp) -> None:
        """The back-end's sink: forward the operation to the frame clock (applied at a frame boundary)."""
        if self.slot is None or self._closed:
            return
        self.metrics.oracle_events += 1
        self.stepper.send_oracle(self.slot, op)

    def _observe(self, event: Event) -> None:
        """Timeline observer: session metrics, and what the client shows live (any thread)."""
        kind = event["type"]
        if kind == LLMFirstToken.TYPE and "ttft" in event:
            self.metrics.llm_ttft_s.append(float(event["ttft"]))
        if kind in _LIVE:
            oracle = None
            if kind in _ORACLE and self.back is not None:
                oracle = self.back.engine.current_oracle
            if self._loop is not None and not self._closed:
                self._loop.call_soon_threadsafe(self._emit, LiveEvent(event, oracle))

    def _emit(self, message: LiveEvent) -> None:
        if not self._closed:
            self.output.on_event(message)


_LIVE = frozenset(live_types())
_ORACLE = frozenset(cls.TYPE for cls in ORACLE_TIMELINE_EVENTS)
