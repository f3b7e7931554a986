"""The frame clock: every active session of the front-end is stepped together every 80 ms.

``FrameClock`` is the core: it owns a ``FrontendEngine`` and one ``SlotState`` per session (the user
audio waiting for the clock, the assistant's words being assembled, oracle operations applied), applies
operations at frame boundaries and steps the batch (Mimi encode -> LM step -> Mimi decode). Two ways
to run it, with the same interface for sessions:

- ``FrameStepper`` runs it on a thread of this process (or by hand, ``step_once``, for offline
  simulation on a virtual clock);
- ``ProcessStepper`` runs it in a child process, so that the step's many short torch calls never wait
  for this process's interpreter lock, busy with WebSockets, Opus and the back-end. Audio and
  operations go down a pipe; each frame's results come back in one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kame.frames import FRAME_S, FRAME_SIZE, SAMPLE_RATE
from kame.frontend.engine import FrontendEngine
from kame.frontend.generator import SamplingConfig, SlotsFullError, StepResult, default_oracle_stream
from kame.oracle import OracleOp
from kame.runtime import frame_pipe as pipe
from kame.runtime.words import AssistantWords

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppliedOracle:
    """An oracle operation as the front-end applied it, right before a frame."""

    kind: str
    stream_id: int
    emitted_t: float  # session time at which the back-end emitted it
    frame: int  # the step that first saw it
    late_tokens: int


@dataclass
class SlotFrame:
    """One session's step, as delivered to it (picklable: it crosses the process boundary)."""

    slot: int
    result: StepResult
    pcm: np.ndarray  # the assistant's 80 ms at 24 kHz
    piece: str | None  # the text it added to the inner monologue (Moshi's 0x02 message)
    words: list[str]  # words completed by this step
    underrun: bool  # no user audio had arrived: stepped on silence
    dropped_s: float  # user audio dropped before this step to keep latency bounded
    applied: list[AppliedOracle]


class SessionSink(Protocol):
    """What the frame clock delivers to (called on the clock's thread, or a receiver thread)."""

    def deliver(self, frame: SlotFrame, step_s: float, late: bool) -> None: ...


class FrontendDown(RuntimeError):
    """The front-end cannot serve: its process died or restarted, or its clock stopped; says why."""


class Stepper(Protocol):
    """The frame clock as sessions and the server see it, complete: ``FrameStepper`` (a thread) and
    ``ProcessStepper`` (a child process) implement every member. ``join`` raises ``SlotsFullError``
    when every slot is taken and ``FrontendDown`` when the front-end cannot serve."""

    stats: StepStats
    on_step: Callable[[float, int, bool], None] | None

    @property
    def capacity(self) -> int: ...

    @property
    def active(self) -> int: ...

    @property
    def device(self) -> str: ...

    @property
    def failure(self) -> str | None:
        """Why the front-end stopped serving, if it did."""

    @property
    def pid(self) -> int | None:
        """The front-end's own process, if it runs in one."""

    @property
    def can_restart(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def restart(self) -> None: ...

    async def join(self, sink: SessionSink, max_backlog_s: float = 0.5) -> int: ...

    def leave(self, slot: int) -> None: ...

    def push_audio(self, slot: int, pcm: np.ndarray) -> None: ...

    def send_oracle(self, slot: int, op: OracleOp) -> None: ...


@dataclass
class StepStats:
    """Frame-clock figures for the whole process, read by the metrics endpoint."""

    steps: int = 0
    frames: int = 0  # session-frames stepped
    late_steps: int = 0  # steps that ended after their frame's deadline
    late_frames: int = 0
    resyncs: int = 0  # times the clock gave up catching up and restarted from now
    step_s: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    errors: int = 0

    def add(self, step_s: float, frames: int, late: bool) -> None:
        self.steps += 1
        self.frames += frames
        self.step_s.append(step_s)
        if late:
            self.late_steps += 1
            self.late_frames += frames

    def percentile_ms(self, q: float) -> float:
        values = list(self.step_s)
        return float(np.percentile(values, q) * 1e3) if values else 0.0


class SlotState:
    """One session inside the frame clock."""

    def __init__(self, sink: SessionSink, words: AssistantWords, max_backlog_s: float) -> None:
        self.sink = sink
        self.words = words
        self._lock = threading.Lock()
        self._input: deque[np.ndarray] = deque()
        self._samples = 0
        self._limit = int(max_backlog_s * SAMPLE_RATE) + FRAME_SIZE
        self._heard = False
        self._dropped = 0
        self.applied: list[AppliedOracle] = []

    def push(self, pcm: np.ndarray) -> None:
        """User audio at 24 kHz (any thread); beyond the backlog bound the oldest audio is dropped."""
        with self._lock:
            self._heard = True
            self._input.append(np.asarray(pcm, dtype=np.float32))
            self._samples += pcm.size
            while self._samples > self._limit and len(self._input) > 1:
                dropped = self._input.popleft()
                self._samples -= dropped.size
                self._dropped += dropped.size

    def take_frame(self) -> tuple[np.ndarray, bool, float]:
        """The next 80 ms (silence on an underrun), whether it was one, and the audio dropped since."""
        with self._lock:
            dropped, self._dropped = self._dropped / SAMPLE_RATE, 0
            if self._samples < FRAME_SIZE:
                return np.zeros(FRAME_SIZE, dtype=np.float32), self._heard, dropped
            parts, need = [], FRAME_SIZE
            while need:
                head = self._input[0]
                if head.size <= need:
                    parts.append(self._input.popleft())
                    need -= head.size
                else:
                    parts.append(head[:need])
                    self._input[0] = head[need:]
                    need = 0
            self._samples -= FRAME_SIZE
        return (np.concatenate(parts) if len(parts) > 1 else parts[0]), False, dropped


class FrameClock:
    """The engine, its sessions and the operations waiting for the next frame boundary."""

    def __init__(self, engine: FrontendEngine, *, frame_s: float = FRAME_S, max_lag_s: float = 1.0) -> None:
        self.engine = engine
        self.frame_s = frame_s
        self.max_lag_s = max_lag_s
        self.stats = StepStats()
        self.on_step: Callable[[float, int, bool], None] | None = None  # (step_s, sessions, late)
        self.max_failed_steps = 25  # in a row (2 s of frames): the front-end is broken, not unlucky
        self.failure: str | None = None
        self._failed_steps = 0
        self._ops: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._slots: dict[int, SlotState] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        lm = engine.frontend.lm
        self._silent_ids = (lm.text_padding_token_id, lm.end_of_text_padding_id)

    # -- any thread ---------------------------------------------------------------------------------
    def submit(self, op: Callable[[], None]) -> None:
        self._ops.put(op)
        self._wake.set()

    def push_audio(self, slot: int, pcm: np.ndarray) -> None:
        state = self._slots.get(slot)
        if state is not None:
            state.push(pcm)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # -- the clock's thread -------------------------------------------------------------------------
    def join(self, sink: SessionSink, max_backlog_s: float = 0.5) -> int:
        slot = self.engine.join()
        words = AssistantWords(
            self.engine.frontend.tokenizer, self._silent_ids, self.engine.frontend.lm.text_card
        )
        self._slots[slot] = SlotState(sink, words, max_backlog_s)
        return slot

    def leave(self, slot: int) -> None:
        if self._slots.pop(slot, None) is not None:
            self.engine.leave(slot)

    def apply_oracle(self, slot: int, op: OracleOp) -> None:
        state = self._slots.get(slot)
        if state is None:
            return
        gen = self.engine.generator
        late = gen.apply_oracle(slot, op.kind, op.text)
        state.applied.append(AppliedOracle(op.kind, op.stream_id, op.t, gen.step_of(slot), late))

    @property
    def active(self) -> int:
        return len(self._slots)

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
                logger.exception("frame clock: an operation failed")

    def step_once(self, deadline: float | None = None) -> list[SlotFrame]:
        """Apply pending operations, then step every session by one frame."""
        self.run_ops()
        if not self._slots:
            return []
        slots = dict(self._slots)
        inputs = {slot: state.take_frame() for slot, state in slots.items()}
        start = time.perf_counter()
        outputs = self.engine.step({slot: taken[0] for slot, taken in inputs.items()})
        end = time.perf_counter()
        step_s = end - start
        late = deadline is not None and end > deadline
        self.stats.add(step_s, len(outputs), late)
        frames = []
        for output in outputs:
            slot = output.result.slot
            state = slots[slot]
            piece, words = state.words.feed(output.result.text)
            _, underrun, dropped = inputs[slot]
            applied, state.applied = state.applied, []
            frame = SlotFrame(slot, output.result, output.pcm, piece, words, underrun, dropped, applied)
            frames.append(frame)
            state.sink.deliver(frame, step_s, late)
        if self.on_step is not None:
            self.on_step(step_s, len(outputs), late)
        return frames

    def run_realtime(self, nice: int | None = -10) -> None:
        """Step every ``frame_s`` until ``stop``; steps that end after their frame's deadline are late."""
        if nice is not None:
            _raise_priority(nice)
        next_tick: float | None = None
        while not self._stop.is_set():
            self.run_ops()
            if not self._slots:
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
                self._failed_steps = 0
            except Exception as exc:  # noqa: BLE001 - keep the clock alive; the failure is counted and logged
                self.stats.errors += 1
                self._failed_steps += 1
                logger.exception("frame clock: a step failed")
                if self._failed_steps >= self.max_failed_steps:
                    self.failure = (
                        f"{self._failed_steps} steps in a row failed; last: {type(exc).__name__}: {exc}"
                    )
                    logger.critical("frame clock stops: %s", self.failure)
                    return
            next_tick += self.frame_s
            if time.perf_counter() - next_tick > self.max_lag_s:
                self.stats.resyncs += 1
                next_tick = time.perf_counter()


def _raise_priority(nice: int) -> None:
    """The frame clock must win the CPU from back-end threads on a busy machine (like an audio thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (PermissionError, OSError, AttributeError) as exc:
        logger.info("frame clock runs at normal priority (could not set nice %d: %s)", nice, exc)


class FrameStepper:
    """The frame clock in this process: on its own thread (``start``), or stepped by hand."""

    def __init__(self, engine: FrontendEngine, *, frame_s: float = FRAME_S, nice: int | None = -10) -> None:
        self.clock = FrameClock(engine, frame_s=frame_s)
        self.engine = engine
        self.nice = nice
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def stats(self) -> StepStats:
        return self.clock.stats

    @property
    def on_step(self) -> Callable[[float, int, bool], None] | None:
        return self.clock.on_step

    @on_step.setter
    def on_step(self, callback: Callable[[float, int, bool], None] | None) -> None:
        self.clock.on_step = callback

    @property
    def capacity(self) -> int:
        return self.engine.max_sessions

    @property
    def active(self) -> int:
        return self.clock.active

    @property
    def device(self) -> str:
        return str(self.engine.device)

    @property
    def pid(self) -> int | None:
        return None  # it runs in this process

    @property
    def can_restart(self) -> bool:
        return False

    def restart(self) -> None:
        raise FrontendDown("the thread frame clock cannot be restarted")

    @property
    def failure(self) -> str | None:
        """Why the clock stopped stepping (a thread cannot be restarted: the server ends), if it did."""
        thread = self._thread
        if self.clock.failure is None and thread is not None and not thread.is_alive() and not self._stopped:
            return "the frame-clock thread ended"
        return self.clock.failure

    async def join(self, sink: SessionSink, max_backlog_s: float = 0.5) -> int:
        """A slot at the next frame boundary; raises ``SlotsFullError`` when every slot is taken."""
        if self.failure:
            raise FrontendDown(self.failure)
        if self._thread is None:  # by hand: nothing else is stepping
            return self.clock.join(sink, max_backlog_s)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()

        def op() -> None:
            try:
                slot = self.clock.join(sink, max_backlog_s)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting coroutine
                loop.call_soon_threadsafe(_settle, done, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, slot, None)

        self.clock.submit(op)
        return await done

    def leave(self, slot: int) -> None:
        self._do(lambda: self.clock.leave(slot))

    def push_audio(self, slot: int, pcm: np.ndarray) -> None:
        self.clock.push_audio(slot, pcm)

    def send_oracle(self, slot: int, op: OracleOp) -> None:
        self._do(lambda: self.clock.apply_oracle(slot, op))

    def _do(self, op: Callable[[], None]) -> None:
        if self._thread is None:
            op()
        else:
            self.clock.submit(op)

    def step_once(self, deadline: float | None = None) -> list[SlotFrame]:
        return self.clock.step_once(deadline)

    def start(self) -> None:
        """Step in real time on a dedicated thread."""
        if self._thread is not None:
            return
        # Torch releases the interpreter lock around every kernel; with Python's default 5 ms switch
        # interval the clock can wait that long to get it back from a busy thread, many times per step.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        self._thread = threading.Thread(
            target=self.clock.run_realtime, args=(self.nice,), name="kame-frame-clock", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self.clock.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.clock.run_ops()


def _settle(future: asyncio.Future, value: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


# -- the frame clock in a child process ---------------------------------------------------------------


@dataclass
class FrontendProcessSpec:
    """What the child process needs to build the front-end itself (a model never crosses processes)."""

    frontend: str
    device: str = "cpu"
    lora: str | None = None
    max_sessions: int = 2
    sampling: dict[str, Any] = field(default_factory=dict)  # over the checkpoint's lm_gen_config
    seed: int | None = None
    frame_s: float = FRAME_S
    nice: int | None = -10
    warm_up_frames: int = 6
    threads: int | None = None  # torch CPU threads in the child; None: as many as this process uses
    oracle_stream: str = "auto"  # --oracle-stream: auto, on or off
    has_oracle_source: bool = True  # sessions have a back-end feeding oracles


class ProcessStepper:
    """The frame clock in a child process, behind the same interface as ``FrameStepper``."""

    def __init__(self, spec: FrontendProcessSpec, *, start_timeout_s: float = 600.0) -> None:
        self.spec = spec
        self.start_timeout_s = start_timeout_s
        self.stats = StepStats()
        self.on_step: Callable[[float, int, bool], None] | None = None
        self.capacity = spec.max_sessions
        self.device = spec.device
        self._sinks: dict[int, SessionSink] = {}
        self._pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[int], SessionSink]] = {}
        self._ids = itertools.count()
        self._send_lock = threading.Lock()
        # User audio is coalesced for ``audio_batch_s`` into one pipe message for all sessions: one
        # message per session per packet cost both processes a pickle, a syscall and (in the child) the
        # interpreter lock, taken from the step, each time.
        self.audio_batch_s = 0.01
        self._audio: list[tuple[int, np.ndarray]] = []
        self._audio_lock = threading.Lock()
        self._flush_pending = False
        self._conn: Any = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._receiver: threading.Thread | None = None
        self.failure: str | None = None

    @property
    def active(self) -> int:
        return len(self._sinks)

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    @property
    def can_restart(self) -> bool:
        return True

    def start(self) -> None:
        """Spawn the child, let it load and warm up the front-end, and wait until it is ready."""
        if self._process is not None:
            return
        if self.spec.threads is None:
            import torch

            # A spawned child starts with one thread per core; two threads on a busy 2-core machine
            # stall each other, so the child inherits this process's setting instead.
            self.spec.threads = torch.get_num_threads()
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(target=_child_main, args=(child, self.spec), name="kame-frame-clock")
        self._process.start()
        child.close()
        self._conn = parent
        if not parent.poll(self.start_timeout_s):
            self._process.kill()
            raise RuntimeError(f"the front-end process did not start within {self.start_timeout_s:.0f} s")
        try:
            message = parent.recv()
        except (EOFError, OSError):
            self._process.join(5)
            message = pipe.StartFailed(f"it exited during start-up (exit code {self._process.exitcode})")
        if not isinstance(message, pipe.Ready):
            self._process.join(5)
            if self._process.is_alive():
                self._process.kill()
            error = message.error if isinstance(message, pipe.StartFailed) else f"unexpected {message!r}"
            raise RuntimeError(f"the front-end process failed to start: {error}")
        self._receiver = threading.Thread(
            target=self._receive, args=(parent, self._process), name="kame-frame-results", daemon=True
        )
        self._receiver.start()

    def stop(self) -> None:
        if self._process is None:
            return
        self._send(pipe.Stop())
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
        if self._receiver is not None:
            self._receiver.join(5)
        self._conn.close()

    def restart(self) -> None:
        """A fresh child after this one died. Its sessions must be closed first: their slots are gone,
        and a slot number of the old process may be handed to a new session by the new one."""
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(10)
            if self._receiver is not None:
                self._receiver.join(5)
            with contextlib.suppress(OSError):
                self._conn.close()
        self._process = self._receiver = None
        self._sinks.clear()
        with self._audio_lock:
            self._audio.clear()
        for loop, future, _ in self._pending.values():
            loop.call_soon_threadsafe(_settle, future, None, FrontendDown("the front-end process restarted"))
        self._pending.clear()
        try:
            self.start()
        except Exception as exc:
            self.failure = f"restart failed: {exc}"
            self._process = None
            raise
        self.failure = None

    def _send(self, message: pipe.ToChild) -> None:
        with self._send_lock:
            try:
                self._conn.send(message)
            except (OSError, ValueError, BrokenPipeError) as exc:
                self.failure = self.failure or f"front-end process unreachable: {exc}"

    async def join(self, sink: SessionSink, max_backlog_s: float = 0.5) -> int:
        if self.failure:
            raise FrontendDown(self.failure)
        loop = asyncio.get_running_loop()
        request = next(self._ids)
        done: asyncio.Future[int] = loop.create_future()
        self._pending[request] = (loop, done, sink)
        self._send(pipe.Join(request, max_backlog_s))
        return await done

    def leave(self, slot: int) -> None:
        self._sinks.pop(slot, None)
        if self.failure is None:
            self._flush_audio()  # before the slot can be handed to another session
            self._send(pipe.Leave(slot))

    def push_audio(self, slot: int, pcm: np.ndarray) -> None:
        if self.failure is not None:
            return
        if self.audio_batch_s <= 0:
            self._send(pipe.Audio([(slot, np.asarray(pcm, dtype=np.float32))]))
            return
        with self._audio_lock:
            self._audio.append((slot, np.asarray(pcm, dtype=np.float32)))
            if self._flush_pending:
                return
            self._flush_pending = True
        try:
            asyncio.get_running_loop().call_later(self.audio_batch_s, self._flush_audio)
        except RuntimeError:  # not on an event loop: no batching
            self._flush_audio()

    def _flush_audio(self) -> None:
        with self._audio_lock:
            batch, self._audio = self._audio, []
            self._flush_pending = False
        if batch and self.failure is None:
            self._send(pipe.Audio(batch))

    def send_oracle(self, slot: int, op: OracleOp) -> None:
        if self.failure is None:
            self._send(pipe.Oracle(slot, op))

    def _receive(self, conn: Any, process: multiprocessing.process.BaseProcess) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                process.join(1)
                code = process.exitcode
                self.failure = self.failure or f"the front-end process ended (exit code {code})"
                if code not in (None, 0):
                    logger.error("the front-end process died (exit code %s)", code)
                for loop, future, _ in self._pending.values():
                    loop.call_soon_threadsafe(_settle, future, None, FrontendDown(self.failure))
                self._pending.clear()
                return
            self._on_message(message)

    def _on_message(self, message: pipe.ToParent) -> None:
        if isinstance(message, pipe.Frames):
            self.stats.add(message.step_s, len(message.frames), message.late)
            for frame in message.frames:
                sink = self._sinks.get(frame.slot)
                if sink is not None:
                    sink.deliver(frame, message.step_s, message.late)
            if self.on_step is not None:
                self.on_step(message.step_s, len(message.frames), message.late)
        elif isinstance(message, pipe.Joined):
            loop, future, sink = self._pending.pop(message.request)
            if message.slot is not None:
                self._sinks[message.slot] = sink
                loop.call_soon_threadsafe(_settle, future, message.slot, None)
            else:
                error = SlotsFullError if message.full else FrontendDown
                loop.call_soon_threadsafe(_settle, future, None, error(message.error))
        elif isinstance(message, pipe.ClockStats):
            self.stats.resyncs, self.stats.errors = message.resyncs, message.errors
        else:
            logger.error("the front-end process sent an unexpected message: %r", message)


class _PipeSink:
    """In the child: collects one step's frames, sent to the parent in one message."""

    def __init__(self, batch: list[SlotFrame]) -> None:
        self.batch = batch

    def deliver(self, frame: SlotFrame, step_s: float, late: bool) -> None:
        self.batch.append(frame)


def _child_main(conn: Any, spec: FrontendProcessSpec) -> None:
    """The child process: build the front-end, then run the frame clock, talking through ``conn``."""
    import torch

    from kame.frontend.checkpoint import load_frontend

    try:
        torch.set_grad_enabled(False)
        if spec.threads:
            torch.set_num_threads(spec.threads)
        if spec.seed is not None:
            torch.manual_seed(spec.seed)
        frontend = load_frontend(spec.frontend, device=spec.device, lora_weights=spec.lora)
        sampling = SamplingConfig.merged(frontend.lm_gen_config, **spec.sampling)
        oracle_stream = spec.oracle_stream == "on" or (
            spec.oracle_stream == "auto"
            and default_oracle_stream(not frontend.upgraded_from_moshi, spec.has_oracle_source)
        )
        engine = FrontendEngine(
            frontend, max_sessions=spec.max_sessions, sampling=sampling, oracle_stream=oracle_stream
        )
        warm_up(engine, spec.warm_up_frames)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(pipe.StartFailed(f"{type(exc).__name__}: {exc}"))
        return
    clock = FrameClock(engine, frame_s=spec.frame_s)
    batch: list[SlotFrame] = []
    sink = _PipeSink(batch)
    send_lock = threading.Lock()

    def send(message: pipe.ToParent) -> None:
        with send_lock:
            try:
                conn.send(message)
            except (OSError, BrokenPipeError):
                clock.stop()

    def on_step(step_s: float, sessions: int, late: bool) -> None:
        frames = list(batch)
        batch.clear()
        send(pipe.Frames(step_s, late, frames))
        if clock.stats.steps % 125 == 0:
            send(pipe.ClockStats(clock.stats.resyncs, clock.stats.errors))

    clock.on_step = on_step

    def join(request: int, max_backlog_s: float) -> None:
        try:
            slot = clock.join(sink, max_backlog_s)
        except SlotsFullError as exc:
            send(pipe.Joined(request, None, str(exc), full=True))
        except Exception as exc:  # noqa: BLE001 - reported to the session that asked
            send(pipe.Joined(request, None, f"{type(exc).__name__}: {exc}"))
        else:
            send(pipe.Joined(request, slot))

    def read() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                clock.stop()
                return
            if isinstance(message, pipe.Audio):
                for slot, pcm in message.chunks:
                    clock.push_audio(slot, pcm)
            elif isinstance(message, pipe.Join):
                clock.submit(lambda m=message: join(m.request, m.max_backlog_s))
            elif isinstance(message, pipe.Leave):
                clock.submit(lambda m=message: clock.leave(m.slot))
            elif isinstance(message, pipe.Oracle):
                clock.submit(lambda m=message: clock.apply_oracle(m.slot, m.op))
            elif isinstance(message, pipe.Stop):
                clock.stop()
                return
            else:
                logger.error("the server sent the front-end process an unexpected message: %r", message)

    threading.Thread(target=read, name="kame-frame-input", daemon=True).start()
    sys.setswitchinterval(0.0005)
    conn.send(pipe.Ready(spec.max_sessions))
    clock.run_realtime(spec.nice)
    engine.close()


def warm_up(engine: FrontendEngine, frames: int = 6) -> None:
    """Step a throw-away session so that compilation and CUDA graphs happen before any client."""
    slot = engine.join()
    silence = np.zeros(FRAME_SIZE, dtype=np.float32)
    for _ in range(frames):
        engine.step({slot: silence})
    engine.leave(slot)
