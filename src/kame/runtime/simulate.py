"""Offline simulation: the live session code (KAME's or the cascade's) over a recording, on a virtual or
a real clock.

The user's audio is fed frame by frame, followed by silence until the assistant's reply ends (its text
stream falls silent for ``reply_silence_s``) or ``max_reply_s`` passes. A conversation is several such
turns in one session: each next turn of user audio starts on the frame after the previous reply ended,
so the reply to it hears the real history. With ``realtime`` the frames are
paced by the wall clock, exactly as a live client. Without it (the default) a virtual clock runs: it
advances 80 ms per frame and charges the back-end (STT decoding, LLM streaming) its real wall time
while it has work pending, skipping ahead when it is idle, and charges the front-end's own compute
nothing (as on a GPU that steps in a few ms). Oracle lags measured this way are therefore a lower bound
on a machine as loaded as this one; ``--realtime`` measures them exactly.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kame.events import AssistantWord, ReplyStart, is_a
from kame.frames import FRAME_S, FRAME_SIZE, SAMPLE_RATE, frames_for, place_reply
from kame.frontend.engine import FrontendEngine
from kame.runtime.backend import Backend
from kame.runtime.cascade.pipeline import Cascade, CascadeSession
from kame.runtime.scheduler import FrameStepper
from kame.runtime.session import Session, SessionOutput
from kame.timeline import Event


class SimulationClock:
    """Wall time, minus the front-end's compute, plus the idle gaps skipped over; never goes back.

    Back-end threads keep recording while the front-end computes; once that compute is excluded, the
    clock stands still until wall time has caught up, so every event's time still follows the last.
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self._last = -math.inf
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self._last = max(self._last, time.perf_counter() + self._offset)
            return self._last

    def exclude(self, seconds: float) -> None:
        """``seconds`` of wall time just spent do not count."""
        self._offset -= seconds

    def skip(self, seconds: float) -> None:
        """Jump ``seconds`` ahead (nothing was waiting)."""
        self._offset += max(0.0, seconds)


@dataclass
class SimulationConfig:
    realtime: bool = False
    reply_silence_s: float = 2.0  # the reply has ended after this long without an assistant word
    max_reply_s: float = 30.0  # ...or after this long past the end of the user's audio
    min_reply_s: float = 3.0  # always run at least this long past the end of the user's audio
    backend_idle_wait_s: float = 0.01


@dataclass
class SimulationResult:
    audio: np.ndarray  # the assistant's 24 kHz audio on the user's clock (kame.frames.place_reply)
    user_audio: np.ndarray  # the user's audio and the silence that followed it, as long as ``audio``
    events: list[Event]
    frames: int
    metrics: dict
    turn_starts: list[float] = field(default_factory=lambda: [0.0])  # seconds where each user turn began

    def words(self) -> list[Event]:
        return [e for e in self.events if is_a(e, AssistantWord)]


@dataclass
class Interruption:
    """The user talks over the reply: ``audio`` (24 kHz) starts ``after_s`` after the first reply audio
    (its ``reply_start``), the closed-loop way a barge-in can be simulated. Cascade sessions only."""

    audio: np.ndarray
    after_s: float = 1.0


async def simulate(
    engine: FrontendEngine,
    backend: Backend | None,
    user_audio: np.ndarray | Sequence[np.ndarray],
    config: SimulationConfig | None = None,
    *,
    session_id: str = "sim",
    timeline_path: str | None = None,
    output: SessionOutput | None = None,
) -> SimulationResult:
    """Run one KAME session over ``user_audio`` (24 kHz mono), or over a list of user turns (each spoken
    once the reply to the one before has ended); the stepper runs in this task (manual mode)."""
    config = config or SimulationConfig()
    stepper = FrameStepper(engine)
    clock = time.perf_counter if config.realtime else SimulationClock()
    session = Session(session_id, stepper, backend, output=output, clock=clock, timeline_path=timeline_path)
    session.keep_audio = True
    await session.start()

    def busy() -> bool:
        return session.back is not None and session.back.busy()

    def wake() -> None:
        if session.back is not None:
            session.back.engine.wake()  # time-based rules (rate limits) may have changed

    try:
        driven = await _drive(session, stepper.step_once, busy, wake, clock, config, user_audio)
    finally:
        await session.close("simulation ended")
    return _result(session, driven)


async def simulate_cascade(
    cascade: Cascade,
    user_audio: np.ndarray | Sequence[np.ndarray],
    config: SimulationConfig | None = None,
    *,
    session_id: str = "sim",
    timeline_path: str | None = None,
    interruption: Interruption | None = None,
    output: SessionOutput | None = None,
) -> SimulationResult:
    """Run one cascade session over ``user_audio`` (24 kHz mono, or a list of turns): the same loop,
    ``tick`` as the step.

    A reply ends once no reply is under way, nothing is pending, and no word was played for
    ``reply_silence_s``.
    """
    config = config or SimulationConfig()
    clock = time.perf_counter if config.realtime else SimulationClock()
    session = cascade.open_session(session_id, clock=clock, timeline_path=timeline_path, output=output)
    session.keep_audio = True
    await session.start()
    try:
        driven = await _drive(
            session, session.tick, session.busy, lambda: None, clock, config, user_audio,
            idle=lambda: session.reply is None and not session.busy(), interruption=interruption,
        )  # fmt: skip
    finally:
        await session.close("simulation ended")
    return _result(session, driven)


@dataclass
class _Driven:
    frames: int
    user: np.ndarray  # what the user said, on the session's clock (interruptions included)
    turn_starts: list[int]  # the frame where each user turn began


def _turns(user_audio: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    turns = [user_audio] if isinstance(user_audio, np.ndarray) else list(user_audio)
    if not turns:
        raise ValueError("a simulation needs at least one turn of user audio")
    return turns


def _lay(heard: np.ndarray, at: int, audio: np.ndarray) -> np.ndarray:
    """``heard`` with ``audio`` written from sample ``at`` (grown as needed)."""
    if len(heard) < at + len(audio):
        heard = np.concatenate([heard, np.zeros(at + len(audio) - len(heard), dtype=np.float32)])
    heard[at : at + len(audio)] = audio
    return heard


async def _drive(
    session: Session | CascadeSession,
    step: Callable[[], object],
    busy: Callable[[], bool],
    wake: Callable[[], None],
    clock: Callable[[], float],
    config: SimulationConfig,
    user_audio: np.ndarray | Sequence[np.ndarray],
    *,
    idle: Callable[[], bool] = lambda: True,
    interruption: Interruption | None = None,
) -> _Driven:
    """Feed each turn's audio frame by frame (then silence), step after each, until its reply is over;
    the next turn starts on the frame after."""
    turns = _turns(user_audio)
    reply_frames = int(np.ceil(config.max_reply_s / FRAME_S))
    min_reply_frames = int(np.ceil(config.min_reply_s / FRAME_S))
    user_frames = frames_for(len(turns[0]))  # the frame where the current turn's audio ends
    max_frames = user_frames + reply_frames
    min_frames = user_frames + min_reply_frames
    heard = _lay(np.zeros(max_frames * FRAME_SIZE, dtype=np.float32), 0, turns[0])
    interrupt_at: int | None = None  # the frame the interruption starts at, once the reply started
    start = time.perf_counter()
    frame, turn, starts = 0, 0, [0]
    last_word_count, last_word_frame = 0, 0
    while True:
        target = frame * FRAME_S
        if config.realtime:
            delay = start + target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await _advance_virtual(session, clock, target, config, busy, wake)  # type: ignore[arg-type]
        if interruption is not None and interrupt_at is None and session.timeline.of_type(ReplyStart.TYPE):
            interrupt_at = frame + int(round(interruption.after_s / FRAME_S))
            end = min(len(heard), interrupt_at * FRAME_SIZE + len(interruption.audio))
            heard[interrupt_at * FRAME_SIZE : end] = interruption.audio[: end - interrupt_at * FRAME_SIZE]
            user_frames = max(user_frames, frames_for(end))
            min_frames = user_frames + min_reply_frames
        chunk = heard[frame * FRAME_SIZE : (frame + 1) * FRAME_SIZE]
        if len(chunk) < FRAME_SIZE:
            chunk = np.zeros(FRAME_SIZE, dtype=np.float32)
        session.push_audio(chunk, SAMPLE_RATE)  # the silence after the question too: the VAD ends it
        began = time.perf_counter()
        step()
        if not config.realtime:
            clock.exclude(time.perf_counter() - began)  # type: ignore[attr-defined]
        await asyncio.sleep(0)  # deliver the frame's results on the loop
        frame += 1
        words = session.metrics.assistant_words
        if words != last_word_count:
            last_word_count, last_word_frame = words, frame
        reply_quiet = (frame - max(last_word_frame, user_frames)) * FRAME_S >= config.reply_silence_s
        if frame >= max_frames or (frame >= min_frames and reply_quiet and idle()):
            turn += 1
            if turn == len(turns):
                break
            heard = _lay(heard, frame * FRAME_SIZE, turns[turn])
            starts.append(frame)
            user_frames = frame + frames_for(len(turns[turn]))
            max_frames, min_frames = user_frames + reply_frames, user_frames + min_reply_frames
    return _Driven(frame, heard[: frame * FRAME_SIZE], starts)


def _result(session: Session | CascadeSession, driven: _Driven) -> SimulationResult:
    frames = driven.frames
    audio = place_reply(session.audio_out, frames * FRAME_SIZE)  # one frame past the last input frame
    user = np.zeros(len(audio), dtype=np.float32)
    user[: len(driven.user)] = driven.user
    return SimulationResult(
        audio, user, session.timeline.events, frames, session.metrics.snapshot(),
        [start * FRAME_S for start in driven.turn_starts],
    )  # fmt: skip


async def _advance_virtual(
    session: Session | CascadeSession,
    clock: SimulationClock,
    target: float,
    config: SimulationConfig,
    busy: Callable[[], bool],
    wake: Callable[[], None],
) -> None:
    """Let virtual time reach ``target``: wait while the back-end works, jump while it is idle."""
    while True:
        now = session.timeline.now()
        if now >= target:
            return
        if busy():
            await asyncio.sleep(min(config.backend_idle_wait_s, target - now))
        else:
            for _ in range(3):  # let pending callbacks (transcripts, decisions, tokens) run first
                await asyncio.sleep(0)
            if not busy():
                clock.skip(target - session.timeline.now())
                wake()
                return
