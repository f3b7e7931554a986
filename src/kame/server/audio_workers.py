"""Reply audio encoded to Ogg Opus in worker processes, so that one interpreter is not the limit.

Opus encoding is the largest per-session cost of the server process, and sphn's encoder holds the
interpreter lock (measured: a pure-Python thread beside it runs at half speed and the encoder at half
speed), so threads cannot spread it; processes can. Each worker owns the Ogg Opus streams of the
sessions given to it. The event loop gathers the PCM that one frame-clock step produced into one
message per worker (a sender thread writes it, so a slow worker never blocks the loop; beyond
``max_backlog`` waiting messages audio is dropped, like audio for a client that does not read), and a
receiver thread per worker hands the Ogg pages back on the event loop.

A worker that dies ends the sessions it carried (an Ogg stream cannot be resumed elsewhere) and is
started again for new sessions; while no worker is up, new sessions encode in the server process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import sphn

from kame.frames import SAMPLE_RATE

logger = logging.getLogger(__name__)

# -- the messages (pickled on a multiprocessing pipe) -------------------------------------------------


@dataclass(frozen=True)
class Encode:
    """PCM (24 kHz float32) for one or more streams: one frame-clock step's, for this worker."""

    chunks: list[tuple[int, np.ndarray]]


@dataclass(frozen=True)
class Close:
    stream: int


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Ready:
    pass


@dataclass(frozen=True)
class Encoded:
    """Ogg pages for the streams that produced any (an encoder buffers until a page is full)."""

    pages: list[tuple[int, bytes]]


@dataclass(frozen=True)
class StreamFailed:
    stream: int
    error: str


# -- encoders: the interface WebSocketOutput uses -----------------------------------------------------


class LocalEncoder:
    """Encode in this process (no workers, or none up)."""

    def __init__(self, on_pages: Callable[[bytes], None]) -> None:
        self._writer = sphn.OpusStreamWriter(SAMPLE_RATE)
        self._on_pages = on_pages

    def encode(self, pcm: np.ndarray) -> bool:
        ogg = self._writer.append_pcm(np.ascontiguousarray(pcm, dtype=np.float32))
        if ogg:
            self._on_pages(ogg)
        return True

    def close(self) -> None:
        pass


class PooledEncoder:
    """One session's stream in a worker; pages come back through ``on_pages`` on the event loop."""

    def __init__(
        self,
        pool: ReplyEncoderPool,
        worker: _Worker,
        stream: int,
        on_pages: Callable[[bytes], None],
        on_failure: Callable[[str], None],
    ) -> None:
        self.pool = pool
        self.worker = worker
        self.stream = stream
        self.on_pages = on_pages
        self.on_failure = on_failure
        self.closed = False

    def encode(self, pcm: np.ndarray) -> bool:
        """Queue 80 ms for the worker; False when it was dropped (the worker is too far behind)."""
        if self.closed:
            return True
        return self.pool._queue_pcm(self, np.ascontiguousarray(pcm, dtype=np.float32))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool._close(self)


# -- the workers --------------------------------------------------------------------------------------


class _Worker:
    """One worker process, its pipe, and the threads that write to and read from it."""

    def __init__(self, index: int, max_backlog: int) -> None:
        self.index = index
        self.streams: dict[int, PooledEncoder] = {}
        self.outbox: queue.Queue[Encode | Close | Stop] = queue.Queue(maxsize=max_backlog)
        self.pending: list[tuple[int, np.ndarray]] = []
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Any = None
        self.alive = False
        self.started_at = 0.0

    def start(self, on_message: Callable[[_Worker, Any], None], on_exit: Callable[[_Worker], None]) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=_worker_main, args=(child,), name=f"kame-audio-{self.index}")
        process.daemon = True
        process.start()
        child.close()
        if not parent.poll(60) or not isinstance(_recv_or_none(parent), Ready):
            process.kill()
            parent.close()
            raise RuntimeError(f"audio worker {self.index} did not start")
        self.process, self.conn, self.alive = process, parent, True
        self.started_at = time.monotonic()
        self.outbox = queue.Queue(maxsize=self.outbox.maxsize)
        threading.Thread(target=self._send, args=(parent,), name=f"kame-audio-send-{self.index}",
                         daemon=True).start()  # fmt: skip
        threading.Thread(
            target=self._receive, args=(parent, process, on_message, on_exit),
            name=f"kame-audio-recv-{self.index}", daemon=True,
        ).start()  # fmt: skip

    def _send(self, conn: Any) -> None:
        outbox = self.outbox
        while True:
            message = outbox.get()
            try:
                conn.send(message)
            except (OSError, ValueError):
                return  # the receiver sees the end and reports it
            if isinstance(message, Stop):
                return

    def _receive(
        self,
        conn: Any,
        process: multiprocessing.process.BaseProcess,
        on_message: Callable[[_Worker, Any], None],
        on_exit: Callable[[_Worker], None],
    ) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            on_message(self, message)
        process.join(1)
        self.alive = False
        with contextlib.suppress(queue.Full):
            self.outbox.put_nowait(Stop())  # ends the sender thread
        on_exit(self)

    def stop(self) -> None:
        if self.process is None:
            return
        self.alive = False
        with contextlib.suppress(queue.Full):
            self.outbox.put(Stop(), timeout=1.0)
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        with contextlib.suppress(OSError):
            self.conn.close()


def _recv_or_none(conn: Any) -> Any:
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


class ReplyEncoderPool:
    """``workers`` encoder processes shared by every session of the server; see the module docstring."""

    def __init__(self, workers: int, *, max_backlog: int = 25, restart_delay_s: float = 1.0) -> None:
        if workers < 1:
            raise ValueError(f"an encoder pool needs at least one worker, got {workers}")
        self._workers = [_Worker(i, max_backlog) for i in range(workers)]
        self.restart_delay_s = restart_delay_s
        self.restarts = 0
        self.dropped = 0  # 80 ms frames dropped because a worker was too far behind
        self._ids = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.alive and w.process is not None and w.process.pid]

    @property
    def alive(self) -> int:
        return sum(w.alive for w in self._workers)

    def start(self) -> None:
        """Start every worker (blocking: call it off the event loop)."""
        self._stopping = False
        for worker in self._workers:
            worker.start(self._on_message, self._on_exit)

    def stop(self) -> None:
        self._stopping = True
        for worker in self._workers:
            worker.stop()

    # -- the event loop -----------------------------------------------------------------------------
    def open(
        self, on_pages: Callable[[bytes], None], on_failure: Callable[[str], None]
    ) -> PooledEncoder | LocalEncoder:
        """A stream on the least-loaded live worker (in this process while none is up)."""
        self._loop = asyncio.get_running_loop()
        live = [w for w in self._workers if w.alive]
        if not live:
            return LocalEncoder(on_pages)
        worker = min(live, key=lambda w: len(w.streams))
        self._ids += 1
        encoder = PooledEncoder(self, worker, self._ids, on_pages, on_failure)
        worker.streams[encoder.stream] = encoder
        return encoder

    def _queue_pcm(self, encoder: PooledEncoder, pcm: np.ndarray) -> bool:
        worker = encoder.worker
        if not worker.alive:
            return False
        if worker.outbox.full():
            self.dropped += 1
            return False
        worker.pending.append((encoder.stream, pcm))
        if not self._flush_scheduled:
            # Every session's frame of one step arrives in the same loop iteration: one message each.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        for worker in self._workers:
            if worker.pending:
                chunks, worker.pending = worker.pending, []
                if worker.alive:
                    try:
                        worker.outbox.put_nowait(Encode(chunks))
                    except queue.Full:
                        self.dropped += len(chunks)

    def _close(self, encoder: PooledEncoder) -> None:
        worker = encoder.worker
        if worker.streams.pop(encoder.stream, None) is not None and worker.alive:
            self._flush()  # its last audio first
            try:
                worker.outbox.put_nowait(Close(encoder.stream))
            except queue.Full:  # the worker is far behind: it cannot be told; its streams end with it
                logger.warning("audio worker %d is %d messages behind", worker.index, worker.outbox.qsize())

    def _deliver(self, worker: _Worker, message: Encoded | StreamFailed) -> None:
        if isinstance(message, Encoded):
            for stream, ogg in message.pages:
                encoder = worker.streams.get(stream)
                if encoder is not None:
                    encoder.on_pages(ogg)
        else:
            encoder = worker.streams.pop(message.stream, None)
            if encoder is not None:
                encoder.closed = True
                encoder.on_failure(f"encoding reply audio failed: {message.error}")

    def _died(self, worker: _Worker) -> None:
        streams, worker.streams = list(worker.streams.values()), {}
        worker.pending.clear()
        for encoder in streams:
            encoder.closed = True
            encoder.on_failure("the audio worker carrying this session stopped")

    # -- the receiver threads -----------------------------------------------------------------------
    def _on_message(self, worker: _Worker, message: Any) -> None:
        loop = self._loop
        if isinstance(message, Encoded | StreamFailed) and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone
                loop.call_soon_threadsafe(self._deliver, worker, message)
        elif not isinstance(message, Encoded | StreamFailed):
            logger.error("audio worker %d sent an unexpected message: %r", worker.index, message)

    def _on_exit(self, worker: _Worker) -> None:
        if self._stopping:
            return
        code = worker.process.exitcode if worker.process is not None else None
        logger.error("audio worker %d stopped (exit code %s); its sessions end", worker.index, code)
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._died, worker)
        if time.monotonic() - worker.started_at < 10.0:
            logger.error("audio worker %d died within 10 s of starting: not restarted", worker.index)
            return
        time.sleep(self.restart_delay_s)
        if self._stopping:
            return
        try:
            worker.start(self._on_message, self._on_exit)
        except Exception:  # noqa: BLE001 - sessions encode in the server process meanwhile
            logger.exception("audio worker %d could not be restarted", worker.index)
            return
        self.restarts += 1
        logger.warning("audio worker %d is back (restart %d)", worker.index, self.restarts)


def _worker_main(conn: Any) -> None:
    """A worker process: one Ogg Opus stream per session it is given, until Stop or its parent is gone."""
    # Ctrl-C and SIGTERM are for the server, which drains its sessions and then stops its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    writers: dict[int, sphn.OpusStreamWriter] = {}
    failed: set[int] = set()  # streams whose session was told; their audio in flight is ignored
    conn.send(Ready())
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(message, Encode):
            pages = []
            for stream, pcm in message.chunks:
                if stream in failed:
                    continue
                writer = writers.get(stream)
                if writer is None:
                    writer = writers[stream] = sphn.OpusStreamWriter(SAMPLE_RATE)
                try:
                    ogg = writer.append_pcm(pcm)
                except Exception as exc:  # noqa: BLE001 - one stream's failure is its session's
                    writers.pop(stream, None)
                    failed.add(stream)
                    conn.send(StreamFailed(stream, f"{type(exc).__name__}: {exc}"))
                    continue
                if ogg:
                    pages.append((stream, ogg))
            if pages:
                conn.send(Encoded(pages))
        elif isinstance(message, Close):
            writers.pop(message.stream, None)
            failed.discard(message.stream)
        elif isinstance(message, Stop):
            return
