"""The streaming speech-to-text interface every engine implements.

An ``STTEngine`` holds what is heavy and shared (model weights) and opens one ``STTStream`` per session.
A stream takes audio frames of any rate from any thread (``push`` never blocks: it resamples and queues)
and hands transcripts to the event loop (``async for t in stream.transcripts()``): partials while the
user speaks, one final per utterance, each with word start/end times in seconds of the session's audio.
Decoding runs on a worker thread, never on the event loop or the caller's thread.

Streams of engines that decode one session at a time derive from ``ThreadedSTTStream`` and implement
``_process``; an engine that batches sessions (Kyutai's) feeds its streams from its own thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kame.audio.io import StreamResampler, to_mono
from kame.errors import ProviderError
from kame.lifecycle import Engine
from kame.queues import DropOldest

logger = logging.getLogger(__name__)

TranscriptKind = Literal["partial", "final"]


class STTError(ProviderError, RuntimeError):
    """A recognizer failed or cannot be set up; the message says what to fix."""

    provider = "stt"


@dataclass(frozen=True)
class Word:
    text: str
    start: float  # seconds of the session's audio
    end: float


@dataclass(frozen=True)
class Transcript:
    """What the recognizer believes the current utterance says.

    ``audio_t`` is how much of the session's audio (seconds) the recognizer had heard when it produced
    this: any word spoken before ``audio_t`` could be in it. ``stable`` counts the leading words not
    expected to change any more (all of them on a final). ``compute_s`` is the decoding time spent on it.
    """

    kind: TranscriptKind
    text: str
    words: tuple[Word, ...]
    utterance: int
    audio_t: float
    stable: int = 0
    compute_s: float = 0.0

    @property
    def word_count(self) -> int:
        return len(self.text.split())


@dataclass
class STTStats:
    """Counters of one stream; ``rtf`` is decoding time over audio time."""

    audio_s: float = 0.0  # audio processed
    compute_s: float = 0.0  # time spent decoding
    decodes: int = 0
    partials: int = 0
    finals: int = 0
    dropped_transcripts: int = 0  # partials dropped because the consumer fell behind
    dropped_audio_s: float = 0.0  # audio dropped because the worker fell too far behind

    @property
    def rtf(self) -> float:
        return self.compute_s / self.audio_s if self.audio_s > 0 else 0.0


@dataclass
class StreamOptions:
    """Limits of a stream's two queues (both drop rather than block, and count what they drop)."""

    max_transcripts: int = 64  # transcripts waiting for the consumer; the oldest partial goes first
    max_pending_s: float = 30.0  # audio waiting for the worker; the oldest audio goes first


class STTEngine(Engine, ABC):
    """A recognizer: loads its model once, serves any number of streams."""

    name: str = "stt"
    sample_rate: int = 16000  # the rate its model consumes

    def load_blocking(self) -> None:  # noqa: B027 - engines without a model to load keep this no-op
        """Load the model (blocking, idempotent). ``open_stream`` loads too; call this to load early."""

    async def load(self) -> None:
        await asyncio.to_thread(self.load_blocking)

    @abstractmethod
    def open_stream(self, session: str = "session", options: StreamOptions | None = None) -> STTStream:
        """A new stream for one session; call ``await stream.start()`` on the event loop before use."""

    def close_blocking(self) -> None:  # noqa: B027 - nothing to release by default
        """Release the model (blocking)."""

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close_blocking)


class STTStream(ABC):
    """One session's recognition. ``push``/``finish`` from any thread; the rest on the event loop."""

    def __init__(self, sample_rate: int, session: str = "session", options: StreamOptions | None = None):
        self.sample_rate = sample_rate
        self.session = session
        self.options = options or StreamOptions()
        self.stats = STTStats()
        self.error: BaseException | None = None
        self._resampler = StreamResampler(sample_rate)
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._pending: deque[np.ndarray] = deque()
        self._pending_samples = 0
        self._gap_samples = 0  # dropped since the worker last took audio
        self._pushed_samples = 0  # at the engine's rate, dropped audio included
        self._processed_samples = 0
        self._finished = False  # no more input
        self._done = False  # every transcript has been handed over
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out: DropOldest[Transcript] = DropOldest(
            self.options.max_transcripts, lambda t: t.kind == "partial"
        )
        self._out_event: asyncio.Event | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    # -- producer side (any thread) -----------------------------------------------------------------
    def push(self, audio: np.ndarray, sample_rate: int) -> None:
        """Queue audio ([T] or [T, C], any rate) for recognition. Never blocks on decoding."""
        if self._finished:
            raise STTError("this stream was finished; open a new stream for more audio")
        samples = self._resampler(to_mono(audio), sample_rate)
        if samples.size:
            self._enqueue(samples)

    def finish(self) -> None:
        """No more audio: the current utterance gets its final, then ``transcripts()`` ends."""
        with self._lock:
            if self._finished:
                return
        tail = self._resampler.flush()
        if tail.size:
            self._enqueue(tail)
        with self._lock:
            self._finished = True
            self._wakeup.notify_all()

    def _enqueue(self, samples: np.ndarray) -> None:
        limit = int(self.options.max_pending_s * self.sample_rate)
        with self._lock:
            self._pending.append(np.ascontiguousarray(samples, dtype=np.float32))
            self._pending_samples += samples.size
            self._pushed_samples += samples.size
            while self._pending_samples > limit and len(self._pending) > 1:
                dropped = self._pending.popleft()
                self._pending_samples -= dropped.size
                self._processed_samples += dropped.size
                self._gap_samples += dropped.size
                self.stats.dropped_audio_s += dropped.size / self.sample_rate
            self._wakeup.notify_all()

    @property
    def backlog_s(self) -> float:
        """Audio pushed but not decoded yet, seconds (what a simulation clock waits for)."""
        with self._lock:
            return max(0, self._pushed_samples - self._processed_samples) / self.sample_rate

    # -- consumer side (event loop) -----------------------------------------------------------------
    async def start(self) -> None:
        """Bind to the running event loop and start recognizing."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._out_event = asyncio.Event()
        await self._start_worker()

    @abstractmethod
    async def _start_worker(self) -> None: ...

    async def transcripts(self) -> AsyncIterator[Transcript]:
        """Transcripts in order; ends after ``finish()`` once the last final is out.

        Raises STTError if decoding failed (after handing over what was decoded before).
        """
        if self._out_event is None:
            raise STTError("call `await stream.start()` before reading transcripts")
        while True:
            while self._out:
                yield self._out.popleft()
            if self._done:
                if self.error is not None:
                    raise STTError(f"{self.session}: recognition failed: {self.error}") from self.error
                return
            self._out_event.clear()
            await self._out_event.wait()

    async def wait_processed(self) -> None:
        """Wait until every sample pushed so far has been decoded (or the stream has ended)."""
        if self._loop is None:
            raise STTError("call `await stream.start()` first")
        with self._lock:
            target = self._pushed_samples
            if self._processed_samples >= target or self._done:
                return
            future: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append((target, future))
        await future

    @abstractmethod
    async def aclose(self) -> None:
        """Stop recognizing now (no final for the current utterance) and release the stream."""

    # -- end of turn (what a cascade waits for) -----------------------------------------------------
    @property
    def turn_end_reason(self) -> str:
        """What ends an utterance here: ``vad_silence``, ``pause_head`` (semantic) or ``input_end``."""
        return "input_end"

    @property
    def end_silence_s(self) -> float | None:
        """Seconds of silence that end an utterance, when silence is what ends it."""
        return None

    def set_end_silence(self, seconds: float) -> None:
        """End utterances after ``seconds`` of silence (streams cut by a VAD); call before audio flows."""
        raise STTError(
            f"{type(self).__name__} does not end utterances on silence; it takes no silence setting"
        )

    # -- worker side (decoding thread) --------------------------------------------------------------
    def _take(self, timeout: float | None = None) -> tuple[np.ndarray, bool, int]:
        """All pending audio (waiting up to ``timeout`` for some), whether input has finished, and how
        many samples were dropped (for falling too far behind) just before this audio."""
        with self._lock:
            if not self._pending and not self._finished:
                self._wakeup.wait(timeout)
            chunks = list(self._pending)
            self._pending.clear()
            self._pending_samples = 0
            gap, self._gap_samples = self._gap_samples, 0
            finished = self._finished
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return audio, finished, gap

    def _backlog_samples(self) -> int:
        with self._lock:
            return self._pending_samples

    def _mark_processed(self, samples: int) -> None:
        with self._lock:
            self._processed_samples += samples
            processed = self._processed_samples
        self._call_soon(self._release_waiters, processed)

    def _emit(self, transcripts: Iterable[Transcript]) -> None:
        for transcript in transcripts:
            if transcript.kind == "final":
                self.stats.finals += 1
            else:
                self.stats.partials += 1
            self._call_soon(self._deliver, transcript)

    def _end(self, error: BaseException | None = None) -> None:
        """The worker is done (input finished, closed, or failed)."""
        if error is not None:
            self.error = error
            logger.error("%s: %s recognition failed: %s", self.session, type(self).__name__, error)
        self._call_soon(self._deliver_end)

    def _call_soon(self, callback, *args) -> None:  # type: ignore[no-untyped-def]
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed meanwhile: nobody is listening any more
            pass

    # -- event-loop callbacks -----------------------------------------------------------------------
    def _deliver(self, transcript: Transcript) -> None:
        if self._out.push(transcript) is not None:
            self.stats.dropped_transcripts += 1
        if self._out_event is not None:
            self._out_event.set()

    def _deliver_end(self) -> None:
        self._done = True
        if self._out_event is not None:
            self._out_event.set()
        self._release_waiters(None)

    def _release_waiters(self, processed: int | None) -> None:
        keep = []
        for target, future in self._waiters:
            if processed is None or processed >= target:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((target, future))
        self._waiters = keep


class ThreadedSTTStream(STTStream):
    """A stream decoded by a worker thread of its own, which calls ``_process`` on each batch of audio.

    The worker takes *all* audio pending when it wakes, so a slow decoder falls behind by decoding less
    often, never by queueing work: engines see how much is still pending (``_backlog_samples``) and
    skip intermediate decodes when they are behind the live edge.
    """

    poll_s: float = 0.05

    def __init__(self, sample_rate: int, session: str = "session", options: StreamOptions | None = None):
        super().__init__(sample_rate, session, options)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    async def _start_worker(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"kame-stt-{self.session}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            while not self._stop.is_set():
                audio, finished, gap = self._take(self.poll_s)
                if self._stop.is_set():
                    break
                if audio.size or finished or gap:
                    started = time.perf_counter()
                    transcripts = list(self._process(audio, finished, gap))
                    self.stats.compute_s += time.perf_counter() - started
                    self.stats.audio_s += audio.size / self.sample_rate
                    self._emit(transcripts)
                    self._mark_processed(audio.size)
                if finished:
                    break
        except Exception as exc:  # noqa: BLE001 - reported through transcripts(), never lost
            error = exc
            logger.exception("%s: decoding failed", self.session)
        finally:
            self._end(error)

    @abstractmethod
    def _process(self, audio: np.ndarray, finished: bool, gap: int) -> Iterable[Transcript]:
        """Decode ``audio`` (the engine's rate); ``finished``: input ended after it; ``gap``: samples
        dropped between the previous audio and this one (the stream fell too far behind)."""

    async def aclose(self) -> None:
        self._stop.set()
        with self._lock:
            self._finished = True
            self._wakeup.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self._free()
        self._deliver_end()

    def _free(self) -> None:  # noqa: B027 - streams without a resource of their own keep this no-op
        """The worker has stopped: give back what it decoded with now, rather than whenever the garbage
        collector gets to this stream (a closed session is freed by the cyclic collector)."""


def words_text(words: Iterable[Word]) -> str:
    return " ".join(w.text for w in words).strip()


def common_prefix(a: list[Word], b: list[Word]) -> int:
    """How many leading words two hypotheses share (compared without case and punctuation)."""
    count = 0
    for x, y in zip(a, b, strict=False):
        if normalize_word(x.text) != normalize_word(y.text):
            break
        count += 1
    return count


def normalize_word(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum() or ch == "'")
