"""The frame clock: one thread steps every active session of the front-end together every 80 ms.

Model compute (Mimi encode -> LM step -> Mimi decode for the whole batch) happens only here, on the
stepper's own thread, so the asyncio side (WebSockets, STT, LLM streams) never waits on it. Everything
that changes the front-end (a session joining or leaving, an oracle operation) is submitted as an
operation and applied at the next frame boundary, in order. The same stepper serves offline simulation
in "manual" mode, where the caller steps it frame by frame on a virtual clock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from kame.frontend.engine import FRAME_SIZE, FrameOutput, FrontendEngine

logger = logging.getLogger(__name__)

FRAME_S = FRAME_SIZE / 24000  # 0.08 s


class SteppedSession(Protocol):
    """What the stepper needs of a session (called on the stepper's thread)."""

    def take_frame(self) -> np.ndarray: ...

    def deliver(self, output: FrameOutput, step_s: float, late: bool) -> None: ...


@dataclass
class StepStats:
    """Process-wide frame-clock figures, read by the metrics endpoint."""

    steps: int = 0
    frames: int = 0  # session-frames stepped
    late_steps: int = 0  # steps that ended after their frame's deadline
    late_frames: int = 0
    resyncs: int = 0  # times the clock gave up catching up and restarted from now
    step_s: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    errors: int = 0

    def percentile_ms(self, q: float) -> float:
        values = list(self.step_s)
        return float(np.percentile(values, q) * 1e3) if values else 0.0


class FrameStepper:
    """Owns a ``FrontendEngine``; ``step_once`` is the only place the models run."""

    def __init__(
        self, engine: FrontendEngine, *, frame_s: float = FRAME_S, max_lag_s: float = 1.0, nice: int = -10
    ) -> None:
        self.engine = engine
        self.nice = nice  # the frame clock's thread priority (like an audio thread); needs CAP_SYS_NICE
        self.switch_interval_s = 0.0005
        self.frame_s = frame_s
        self.max_lag_s = max_lag_s
        self.stats = StepStats()
        self._ops: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._sessions: dict[int, SteppedSession] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_step: Callable[[float, int, bool], None] | None = None  # (step_s, sessions, late)

    # -- operations (any thread) --------------------------------------------------------------------
    def submit(self, op: Callable[[], None]) -> None:
        """Run ``op`` on the stepper's thread before the next frame."""
        self._ops.put(op)
        self._wake.set()

    async def join(self, session: SteppedSession) -> int:
        """Give ``session`` a slot at the next frame boundary; raises ``SlotsFullError`` when full."""
        if self._thread is None:  # manual mode: nothing else is stepping
            return self._join(session)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()

        def op() -> None:
            try:
                slot = self._join(session)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting coroutine
                loop.call_soon_threadsafe(_set_exception, done, exc)
            else:
                loop.call_soon_threadsafe(_set_result, done, slot)

        self.submit(op)
        return await done

    def _join(self, session: SteppedSession) -> int:
        slot = self.engine.join()
        self._sessions[slot] = session
        return slot

    def leave(self, slot: int) -> None:
        """Free ``slot`` at the next frame boundary (its state is wiped for the next session)."""

        def op() -> None:
            if self._sessions.pop(slot, None) is not None:
                self.engine.leave(slot)

        if self._thread is None:
            op()
        else:
            self.submit(op)

    @property
    def active(self) -> int:
        return len(self._sessions)

    @property
    def capacity(self) -> int:
        return self.engine.max_sessions

    # -- stepping (the stepper's thread) ------------------------------------------------------------
    def run_ops(self) -> None:
        while True:
            try:
                op = self._ops.get_nowait()
            except queue.Empty:
                return
            try:
                op()
            except Exception:  # noqa: BLE001 - one bad operation must not stop the clock
                self.stats.errors += 1
                logger.exception("frame stepper: an operation failed")

    def step_once(self, deadline: float | None = None) -> list[FrameOutput]:
        """Apply pending operations, then step every session by one frame."""
        self.run_ops()
        if not self._sessions:
            return []
        sessions = dict(self._sessions)
        frames = {slot: session.take_frame() for slot, session in sessions.items()}
        start = time.perf_counter()
        outputs = self.engine.step(frames)
        end = time.perf_counter()
        step_s = end - start
        late = deadline is not None and end > deadline
        stats = self.stats
        stats.steps += 1
        stats.frames += len(outputs)
        stats.step_s.append(step_s)
        if late:
            stats.late_steps += 1
            stats.late_frames += len(outputs)
        for output in outputs:
            session = sessions.get(output.result.slot)
            if session is not None:
                session.deliver(output, step_s, late)
        if self.on_step is not None:
            self.on_step(step_s, len(outputs), late)
        return outputs

    # -- real time ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Step in real time on a dedicated thread."""
        if self._thread is not None:
            return
        # Torch releases the interpreter lock around every kernel; with Python's default 5 ms switch
        # interval the frame clock can wait that long to get it back from a busy back-end thread, many
        # times per step. A shorter interval keeps the clock's steps short in a busy process.
        sys.setswitchinterval(min(sys.getswitchinterval(), self.switch_interval_s))
        self._thread = threading.Thread(target=self._run, name="kame-frame-clock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.run_ops()

    def _raise_priority(self) -> None:
        """The frame clock must win the CPU from back-end threads on a busy machine."""
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        except (PermissionError, OSError, AttributeError) as exc:
            logger.info("frame clock runs at normal priority (could not set nice %d: %s)", self.nice, exc)

    def _run(self) -> None:
        self._raise_priority()
        next_tick: float | None = None
        while not self._stop.is_set():
            self.run_ops()
            if not self._sessions:
                next_tick = None
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            now = time.perf_counter()
            if next_tick is None:
                next_tick = now
            if now < next_tick:
                time.sleep(next_tick - now)
            try:
                self.step_once(deadline=next_tick + self.frame_s)
            except Exception:  # noqa: BLE001 - keep the clock alive; the failure is counted and logged
                self.stats.errors += 1
                logger.exception("frame stepper: a step failed")
            next_tick += self.frame_s
            if time.perf_counter() - next_tick > self.max_lag_s:
                self.stats.resyncs += 1
                next_tick = time.perf_counter()


def _set_result(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
