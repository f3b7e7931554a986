"""The aiohttp application: /api/chat (Moshi's protocol), /healthz, /metrics and the web client.

Many KAME sessions share one batched front-end stepped by one frame clock; each WebSocket gets its own
back-end. Cascade sessions (``?pipeline=cascade``, when offered) take no front-end slot: each paces its
reply audio by its own 80 ms clock, within ``max_cascade_sessions``, and outlives a front-end restart.
When every slot is taken a new client is refused with HTTP 503 or, if configured, waits in a
bounded queue (told its position). A client that breaks the protocol, sends oversized messages, goes
silent or disconnects mid-frame ends its own session cleanly; nobody else notices.

Access (tokens, origins, a per-client limit) is checked before the WebSocket upgrade. A supervisor
restarts a dead front-end process with backoff (the sessions it carried are told and closed first, so
no slot of the old process is ever confused with one of the new); ``drain`` is the graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import sphn
from aiohttp import WSMsgType, web

from kame import heap
from kame.events import (
    LiveEvent,
    MetricsUpdate,
    Queued,
    SessionError,
    SessionReady,
    ShuttingDown,
    WireEvent,
)
from kame.frames import FRAME_S, SAMPLE_RATE
from kame.runtime.backend import Backend
from kame.runtime.cascade.pipeline import Cascade, CascadeSession
from kame.runtime.scheduler import Stepper
from kame.runtime.session import Session
from kame.server import garbage, protocol
from kame.server.audio_workers import LocalEncoder, PooledEncoder, ReplyEncoderPool
from kame.server.metrics import CpuMeter, ServerMetrics
from kame.server.security import SUBPROTOCOL, AccessPolicy, ClientLimiter

logger = logging.getLogger(__name__)

PIPELINES = ("kame", "cascade")
GC_DELAY_S = 0.5  # after a session ends, before its garbage is collected (see _after_session)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8998
    when_full: str = "reject"  # or "queue"
    queue_size: int = 8
    queue_timeout_s: float = 120.0
    max_message_bytes: int = 256 * 1024
    idle_timeout_s: float = 15.0  # a client that sends nothing this long is disconnected
    max_session_s: float | None = 3600.0
    metrics_interval_s: float = 1.0
    max_outgoing: int = 400  # messages waiting for a slow client; beyond this audio is dropped
    max_audio_ahead_s: float = 1.0  # audio a client may send ahead of real time; beyond, it is dropped
    timeline_dir: str | None = None
    max_per_client: int | None = 8  # concurrent connections per client address (None: no limit)
    handshake_timeout_s: float = 10.0  # request head, TLS, and upgrade-to-session-start, each
    drain_timeout_s: float = 30.0  # SIGTERM: how long live sessions may go on
    restart_backoff_s: float = 1.0  # first delay before restarting a dead front-end process; doubles
    restart_backoff_max_s: float = 30.0
    max_failed_starts: int = 5  # failed starts in a row before the supervisor gives up
    supervise_interval_s: float = 0.2
    pipelines: tuple[str, ...] = ("kame",)  # what /api/chat offers; the first is the default
    max_cascade_sessions: int = 4  # cascade sessions take no front-end slot: their own limit
    audio_workers: int = 0  # processes encoding reply Opus (0: in this process); see audio_workers.py
    trim_heap_s: float | None = 10.0  # after a session ends, return free heap pages (at most this often)
    collect_garbage: bool = False  # freeze start-up's objects, collect after each session (garbage.py)

    def __post_init__(self) -> None:
        unknown = [name for name in self.pipelines if name not in PIPELINES]
        if not self.pipelines or unknown:
            raise ValueError(f"pipelines must name kame and/or cascade, got {self.pipelines!r}")
        if self.max_cascade_sessions < 0:
            raise ValueError(f"max_cascade_sessions must be >= 0, got {self.max_cascade_sessions}")
        if self.when_full not in ("reject", "queue"):
            raise ValueError(f"when_full must be 'reject' or 'queue', got {self.when_full!r}")
        if self.queue_size < 0 or self.max_message_bytes < 64 or self.idle_timeout_s <= 0:
            raise ValueError("queue_size >= 0, max_message_bytes >= 64 and idle_timeout_s > 0 are required")
        if self.handshake_timeout_s <= 0 or self.drain_timeout_s < 0 or self.max_failed_starts < 1:
            raise ValueError(
                "handshake_timeout_s > 0, drain_timeout_s >= 0 and max_failed_starts >= 1 are required"
            )
        if self.audio_workers < 0:
            raise ValueError(f"audio_workers must be >= 0, got {self.audio_workers}")
        if self.max_per_client is not None and self.max_per_client < 1:
            raise ValueError(f"max_per_client must be at least 1, got {self.max_per_client}")


class ServerFull(Exception):
    """Every slot is taken and the queue (if any) is full."""


class CapacityGate:
    """At most ``capacity`` sessions; others wait in a bounded FIFO queue or are refused."""

    def __init__(self, capacity: int, queue_size: int, queueing: bool) -> None:
        self.capacity = capacity
        self.queue_size = queue_size if queueing else 0
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> asyncio.Future[None] | None:
        """None: a slot is yours. A future: wait for it (and ``cancel`` on giving up). Raises ServerFull."""
        if self.active < self.capacity and not self._waiters:
            self.active += 1
            return None
        if len(self._waiters) >= self.queue_size:
            raise ServerFull(f"all {self.capacity} sessions are in use and {self.queued} clients are waiting")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        return future

    def position(self, future: asyncio.Future[None]) -> int:
        return list(self._waiters).index(future) + 1 if future in self._waiters else 0

    def cancel(self, future: asyncio.Future[None]) -> None:
        if future in self._waiters:
            self._waiters.remove(future)
        elif future.done() and not future.cancelled():
            self.release()  # it was granted just as the client gave up

    def release(self) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)  # the slot passes straight to the next client
                return
        self.active -= 1


class WebSocketOutput:
    """A session's products, encoded and queued for one WebSocket (never blocks the session).

    Reply audio goes through ``encoder`` (in this process, or a worker's stream: ``audio_workers``);
    ``failure`` says why the session must end when its worker stopped."""

    def __init__(self, events: bool, max_outgoing: int) -> None:
        self.events = events
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=max_outgoing)
        self.encoder: LocalEncoder | PooledEncoder = LocalEncoder(self.on_ogg)
        self.dropped = 0
        self.failure: str | None = None
        self.on_failure: Callable[[str], None] | None = None

    def _put(self, message: bytes, droppable: bool = False) -> None:
        if self.queue.full():
            if droppable:
                self.dropped += 1
                return
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
                self.dropped += 1
        self.queue.put_nowait(message)

    def on_audio(self, pcm: np.ndarray) -> None:
        if not self.encoder.encode(pcm):
            self.dropped += 1

    def on_ogg(self, ogg: bytes) -> None:
        self._put(protocol.audio_message(ogg), droppable=True)

    def fail(self, why: str) -> None:
        """The encoder cannot go on (its worker stopped): the session must end."""
        self.failure = self.failure or why
        if self.on_failure is not None:
            self.on_failure(why)

    def on_text(self, piece: str) -> None:
        self._put(protocol.text_message(piece))

    def on_event(self, event: WireEvent | LiveEvent) -> None:
        if self.events:
            self._put(protocol.metadata_message(event))

    def close(self) -> None:
        self.encoder.close()
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)


class KameServer:
    """Owns the frame clock, the shared back-end, the sessions and the HTTP routes."""

    def __init__(
        self,
        stepper: Stepper | None,
        backend: Backend | None,
        config: ServerConfig | None = None,
        static_dir: str | Path | None = None,
        policy: AccessPolicy | None = None,
        *,
        cascade: Cascade | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        if "kame" in self.config.pipelines and stepper is None:
            raise ValueError("serving the kame pipeline needs the front-end's frame clock (a stepper)")
        if "cascade" in self.config.pipelines and cascade is None:
            raise ValueError("serving the cascade pipeline needs a Cascade (its STT, LLM and reply voice)")
        self.backend = backend
        self.cascade = cascade
        self.stepper = stepper
        self.policy = policy or AccessPolicy()
        self.metrics = ServerMetrics()
        capacity = stepper.capacity if stepper is not None else 0
        self.metrics.capacity.set(capacity)
        if stepper is not None:
            stepper.on_step = self.metrics.on_step
        self.gate = CapacityGate(capacity, self.config.queue_size, self.config.when_full == "queue")
        self.cascade_gate = CapacityGate(self.config.max_cascade_sessions, 0, False)
        self.limiter = ClientLimiter(self.config.max_per_client)
        self.encoders = ReplyEncoderPool(self.config.audio_workers) if self.config.audio_workers else None
        self.cpu = CpuMeter(
            lambda: self.stepper.stats.frames if self.stepper is not None else 0,
            lambda: self.stepper.pid if self.stepper is not None else None,
            lambda: self.encoders.pids if self.encoders is not None else [],
        )
        self.sessions: dict[str, Session | CascadeSession] = {}
        self._sockets: dict[str, tuple[web.WebSocketResponse, WebSocketOutput]] = {}
        self._pipeline_of: dict[str, str] = {}  # session id -> kame or cascade
        self._ids = itertools.count(1)
        self.static_dir = Path(static_dir) if static_dir else _default_static_dir()
        self.started = time.time()
        self.state = "starting"  # ok | restarting | error | draining
        self.restarts = 0
        self.give_up: str | None = None  # why the supervisor stopped restarting the front-end
        self.fatal: str | None = None  # why the server must exit (a front-end that cannot be restarted)
        self.fatal_event = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._last_start = 0.0
        self._crashes_soon_after_start = 0
        self._tasks: set[asyncio.Future[Any]] = set()
        self._last_trim = -float("inf")
        self._collection: asyncio.TimerHandle | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_message_bytes)
        app.router.add_get("/api/chat", self.chat)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.prometheus)
        if (self.static_dir / "index.html").is_file():
            app.router.add_get("/", self.index)
            app.router.add_static("/static/", self.static_dir)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        if self.backend is not None:
            await self.backend.load()
        if self.cascade is not None:
            await self.cascade.load()
        if self.encoders is not None:
            await asyncio.to_thread(self.encoders.start)
        if self.stepper is not None:  # a child process may take a while to load the model
            await asyncio.to_thread(self.stepper.start)
        self.state = "ok"
        self._last_start = time.monotonic()
        self._supervisor = asyncio.create_task(self._supervise(), name="kame-supervisor")
        if self.config.collect_garbage:
            garbage.freeze_startup()

    async def _on_shutdown(self, app: web.Application) -> None:
        if self._collection is not None:
            self._collection.cancel()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._end_sessions("server shutdown", "the server is shutting down")
        if self.stepper is not None:
            await asyncio.to_thread(self.stepper.stop)
        if self.encoders is not None:
            await asyncio.to_thread(self.encoders.stop)
        if self.backend is not None:
            await self.backend.aclose()
        if self.cascade is not None and (self.backend is None or self.cascade.llm is not self.backend.llm):
            await self.cascade.aclose()  # its models are its own, not the KAME back-end's

    async def drain(self, timeout_s: float | None = None) -> int:
        """Graceful shutdown: refuse new sessions, tell live ones, let them finish up to ``timeout_s``,
        then end the rest (timelines are closed whole). Returns how many had to be cut short."""
        timeout_s = self.config.drain_timeout_s if timeout_s is None else timeout_s
        self.state = "draining"
        live = list(self._sockets.values())
        logger.info("draining: %d live sessions get up to %.0f s to finish", len(live), timeout_s)
        for _, output in live:
            output.on_event(ShuttingDown(drain_s=timeout_s))
        deadline = time.monotonic() + timeout_s
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        cut = len(self.sessions)
        await self._end_sessions("server shutdown", "the server is shutting down")
        return cut

    async def _end_sessions(self, reason: str, message: str, pipeline: str | None = None) -> None:
        """Close every live session (of ``pipeline``, if given; its timeline whole) and tell its client
        why (0x05, then close)."""
        entries = [
            (sid, self.sessions.get(sid), ws)
            for sid, (ws, _) in list(self._sockets.items())
            if pipeline is None or self._pipeline_of.get(sid) == pipeline
        ]

        async def end(session: Session | CascadeSession | None, ws: web.WebSocketResponse) -> None:
            if session is not None:
                await session.close(reason)
            await _close_with_error(ws, message)

        await asyncio.gather(*(end(session, ws) for _, session, ws in entries), return_exceptions=True)

    def _spawn(self, coroutine: Any) -> None:
        """Run ``coroutine`` as a task that is kept until it ends (the loop holds tasks weakly)."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the supervisor -----------------------------------------------------------------------------
    async def _supervise(self) -> None:
        """Watch the front-end; restart a dead process with backoff, or end the server (thread clock)."""
        next_cpu = 0.0
        while True:
            await asyncio.sleep(self.config.supervise_interval_s)
            if time.monotonic() >= next_cpu:
                self.cpu.update(self.metrics)
                next_cpu = time.monotonic() + 1.0
            failure = self.failure
            if failure is None or self.state in ("error", "draining"):
                continue
            if not self.stepper.can_restart:
                self.state = "error"
                self.fatal = f"the front-end failed ({failure}); the thread frame clock cannot be restarted"
                logger.critical("%s: the server stops", self.fatal)
                await self._end_sessions("front-end failed", f"the front-end stopped: {failure}", "kame")
                self.fatal_event.set()
                return
            self.state = "restarting"
            logger.error("the front-end process failed (%s): ending its sessions and restarting it", failure)
            await self._end_sessions("front-end failed", f"the front-end stopped: {failure}", "kame")
            if time.monotonic() - self._last_start < 60.0:
                self._crashes_soon_after_start += 1  # a crash loop: back off further each time
            else:
                self._crashes_soon_after_start = 0
            if not await self._restart_with_backoff():
                return

    async def _restart_with_backoff(self) -> bool:
        config = self.config
        failed = 0
        while True:
            doublings = failed + self._crashes_soon_after_start
            delay = min(config.restart_backoff_max_s, config.restart_backoff_s * 2**doublings)
            await asyncio.sleep(delay)
            try:
                await asyncio.to_thread(self.stepper.restart)
            except Exception as exc:  # noqa: BLE001 - counted; several in a row and it gives up
                failed += 1
                logger.error("restarting the front-end failed (%d in a row): %s", failed, exc)
                if failed >= config.max_failed_starts:
                    self.give_up = f"the front-end failed to start {failed} times in a row; last error: {exc}"
                    self.state = "error"
                    logger.critical("giving up: %s", self.give_up)
                    return False
                continue
            self.restarts += 1
            self.metrics.frontend_restarts.inc()
            self._last_start = time.monotonic()
            self.state = "ok"
            logger.warning("the front-end process is back (restart %d)", self.restarts)
            return True

    # -- plain HTTP ---------------------------------------------------------------------------------
    @property
    def failure(self) -> str | None:
        """Why the front-end cannot serve now (its process died, its thread failed), if it cannot."""
        return self.stepper.failure if self.stepper is not None else None

    @property
    def serving(self) -> bool:
        return self.state == "ok" and self.failure is None

    def serves(self, pipeline: str) -> bool:
        """Whether a new session of ``pipeline`` can start now (the cascade needs no front-end)."""
        if pipeline == "cascade":
            return self.state in ("ok", "restarting") and self.fatal is None
        return self.serving

    async def healthz(self, request: web.Request) -> web.Response:
        status = self.state
        if status == "ok" and self.failure:  # the supervisor has not seen it yet
            status = "restarting" if self.stepper is not None and self.stepper.can_restart else "error"
        body: dict[str, object] = {
            "status": status,
            "error": self.give_up or self.fatal or self.failure,
            "restarts": self.restarts,
            "auth": self.policy.tokens.required,
            "pipelines": list(self.config.pipelines),
            "sessions": len(self.sessions),
            "capacity": self.stepper.capacity if self.stepper is not None else 0,
            "queued": self.gate.queued,
            "cascade_sessions": self.cascade_gate.active,
            "cascade_capacity": self.config.max_cascade_sessions if self.cascade is not None else 0,
            "uptime_s": round(time.time() - self.started, 1),
        }
        if self.stepper is not None:
            stats = self.stepper.stats
            body.update(
                device=self.stepper.device, steps=stats.steps, step_ms_p50=round(stats.percentile_ms(50), 2),
                step_ms_p99=round(stats.percentile_ms(99), 2), late_frames=stats.late_frames,
            )  # fmt: skip
        return web.json_response(body, status=200 if status == "ok" else 503)

    async def prometheus(self, request: web.Request) -> web.Response:
        refused = self.policy.check_metrics(request)
        if refused is not None:
            return refused
        self.metrics.sessions_active.set(len(self.sessions))
        self.metrics.sessions_queued.set(self.gate.queued)
        self.metrics.up.set(1 if self.serving else 0)
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def index(self, request: web.Request) -> web.FileResponse:
        # The page may have been opened as /?token=...: no referrer may carry it to any other request.
        return web.FileResponse(self.static_dir / "index.html", headers={"Referrer-Policy": "no-referrer"})

    # -- the chat WebSocket -------------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        refused = self.policy.check_chat(request)
        if refused is not None:
            self.metrics.sessions_refused.labels(str(refused.status)).inc()
            return refused
        address = self.policy.client_address(request)
        if not self.limiter.acquire(address):
            self.metrics.sessions_refused.labels("429").inc()
            return web.json_response(
                {"error": f"at most {self.limiter.limit} connections per client; close one first"}, status=429
            )
        try:
            return await self._chat(request)
        finally:
            self.limiter.release(address)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        events = request.query.get("events", "0").lower() in ("1", "true", "yes")
        pipeline = request.query.get("pipeline", self.config.pipelines[0]).strip().lower()
        if pipeline not in self.config.pipelines:
            offered = ", ".join(self.config.pipelines)
            return web.json_response(
                {"error": f"pipeline {pipeline!r} is not served here; choose one of: {offered}"}, status=400
            )
        if pipeline == "cascade" and self.serves("cascade"):
            return await self._chat_cascade(request, events)
        if not self.serving:
            why = {"draining": "the server is shutting down", "starting": "the server is starting"}.get(
                self.state,
                f"the front-end is down: {self.give_up or self.fatal or self.failure or self.state}",
            )
            return web.json_response({"error": f"{why}; try again later", "status": self.state}, status=503)
        try:
            waiter = self.gate.try_acquire()
        except ServerFull as exc:
            self.metrics.sessions_rejected.inc()
            return web.json_response({"error": f"server full: {exc}; try again later"}, status=503)
        ws = web.WebSocketResponse(
            max_msg_size=self.config.max_message_bytes, heartbeat=10.0, protocols=(SUBPROTOCOL,)
        )
        try:
            await ws.prepare(request)
        except Exception:
            if waiter is None:
                self.gate.release()
            else:
                self.gate.cancel(waiter)
            raise
        if waiter is not None and not await self._wait_in_queue(ws, waiter, events):
            return ws
        try:
            await self._serve(ws, events)
        finally:
            self.gate.release()
        return ws

    async def _chat_cascade(self, request: web.Request, events: bool) -> web.StreamResponse:
        """A cascade session: no front-end slot, its own limit (refused when full, never queued)."""
        try:
            self.cascade_gate.try_acquire()
        except ServerFull:
            self.metrics.sessions_rejected.inc()
            limit = self.config.max_cascade_sessions
            return web.json_response(
                {"error": f"server full: all {limit} cascade sessions are in use; try again later"},
                status=503,
            )
        try:
            ws = web.WebSocketResponse(
                max_msg_size=self.config.max_message_bytes, heartbeat=10.0, protocols=(SUBPROTOCOL,)
            )
            await ws.prepare(request)
            await self._serve(ws, events, "cascade")
        finally:
            self.cascade_gate.release()
        return ws

    async def _wait_in_queue(
        self, ws: web.WebSocketResponse, waiter: asyncio.Future[None], events: bool
    ) -> bool:
        """Tell the client its place until a slot frees; False if it left or waited too long."""
        deadline = time.monotonic() + self.config.queue_timeout_s
        try:
            while not waiter.done():
                if ws.closed or time.monotonic() > deadline:
                    self.gate.cancel(waiter)
                    if not ws.closed:
                        await _close_with_error(ws, "waited too long for a free session; try again later")
                    return False
                if events:
                    await ws.send_bytes(
                        protocol.metadata_message(Queued(position=self.gate.position(waiter)))
                    )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter), timeout=1.0)
        except (ConnectionError, RuntimeError):
            self.gate.cancel(waiter)
            return False
        return True

    async def _serve(self, ws: web.WebSocketResponse, events: bool, pipeline: str = "kame") -> None:
        session_id = f"s{next(self._ids)}"
        output = WebSocketOutput(events, self.config.max_outgoing)
        if self.encoders is not None:
            output.encoder = self.encoders.open(output.on_ogg, output.fail)
        output.on_failure = lambda why: self._spawn(_close_with_error(ws, why))
        timeline_path = None
        if self.config.timeline_dir:
            timeline_path = str(Path(self.config.timeline_dir) / f"{session_id}-{int(time.time())}.jsonl")
        session: Session | CascadeSession
        if pipeline == "cascade" and self.cascade is not None:
            session = self.cascade.open_session(session_id, output=output, timeline_path=timeline_path)
        else:
            assert self.stepper is not None  # the constructor checked that kame has its frame clock
            session = Session(
                session_id, self.stepper, self.backend, output=output, timeline_path=timeline_path
            )
        self.metrics.observe(session.timeline)
        reason = "client closed"
        sender: asyncio.Task[None] | None = None
        ticker = asyncio.create_task(
            self._metrics_loop(ws, session, output), name=f"kame-metrics-{session_id}"
        )
        self._sockets[session_id] = (ws, output)
        self._pipeline_of[session_id] = pipeline
        try:
            # A cascade session paces its reply audio by its own 80 ms clock.
            start = session.start(paced=True) if isinstance(session, CascadeSession) else session.start()
            try:
                await asyncio.wait_for(start, self.config.handshake_timeout_s)
            except TimeoutError:
                raise RuntimeError(
                    f"the session did not start within {self.config.handshake_timeout_s:.0f} s"
                ) from None
            if not self.serves(pipeline):  # the front-end failed while this session was starting
                raise RuntimeError(f"the front-end stopped: {self.failure or self.state}")
            self.sessions[session_id] = session
            self.metrics.sessions_total.inc()
            await ws.send_bytes(protocol.HANDSHAKE)  # before any frame: the sender starts after it
            sender = asyncio.create_task(self._send_loop(ws, output), name=f"kame-send-{session_id}")
            output.on_event(
                SessionReady(
                    session=session_id,
                    pipeline=pipeline,
                    pipelines=list(self.config.pipelines),
                    sample_rate=SAMPLE_RATE,
                    frame_ms=round(FRAME_S * 1000),
                )  # fmt: skip
            )
            reason = await self._receive_loop(ws, session)
            if output.failure is not None:
                reason = "server error"
        except protocol.ProtocolError as exc:
            reason = "protocol error"
            await _close_with_error(ws, str(exc))
        except Exception as exc:  # noqa: BLE001 - one session's failure must not touch the others
            reason = "server error"
            if not ws.closed:
                logger.exception("session %s failed", session_id)
            await _close_with_error(ws, f"server error: {type(exc).__name__}: {exc}")
        finally:
            self.sessions.pop(session_id, None)
            self._sockets.pop(session_id, None)
            self._pipeline_of.pop(session_id, None)
            self.metrics.sessions_ended.labels(reason).inc()
            await session.close(reason)
            output.close()
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await ticker
            if sender is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(sender, timeout=2.0)
            if not ws.closed:
                await ws.close()
            self._after_session()

    def _after_session(self) -> None:
        """Free what the session left: collect its garbage (a moment later, once this handler has
        returned and dropped its references; one collection for sessions that end together), then
        give free heap pages back."""
        if not self.config.collect_garbage:
            self._trim_heap()
        elif self._collection is None:
            self._collection = asyncio.get_running_loop().call_later(GC_DELAY_S, self._collect_garbage)

    def _collect_garbage(self) -> None:
        self._collection = None
        self.metrics.gc_seconds.observe(garbage.collect())
        self._trim_heap()

    def _trim_heap(self) -> None:
        """A session's buffers are free now: give their pages back (heap.py says why), in a thread."""
        interval = self.config.trim_heap_s
        if interval is None or time.monotonic() - self._last_trim < interval:
            return
        self._last_trim = time.monotonic()
        self._spawn(asyncio.to_thread(heap.trim))

    async def _receive_loop(self, ws: web.WebSocketResponse, session: Session | CascadeSession) -> str:
        reader = sphn.OpusStreamReader(SAMPLE_RATE)
        started = time.monotonic()
        accepted_s = 0.0  # a client faster than real time must not make the shared STT work for it
        while True:
            limit = self.config.max_session_s
            if limit is not None and time.monotonic() - started > limit:
                await _close_with_error(ws, f"session time limit of {limit:.0f} s reached")
                return "time limit"
            try:
                msg = await ws.receive(timeout=self.config.idle_timeout_s)
            except TimeoutError:
                await _close_with_error(ws, f"no message for {self.config.idle_timeout_s:.0f} s: closing")
                return "idle"
            if msg.type == WSMsgType.BINARY:
                message = protocol.parse_client_message(msg.data, self.config.max_message_bytes)
                if message.kind == protocol.KIND_AUDIO:
                    try:
                        pcm = reader.append_bytes(message.payload)
                    except ValueError as exc:
                        raise protocol.ProtocolError(f"audio is not Ogg Opus at 24 kHz ({exc})") from exc
                    seconds = pcm.size / SAMPLE_RATE
                    if accepted_s + seconds > time.monotonic() - started + self.config.max_audio_ahead_s:
                        self.metrics.input_too_fast.inc(seconds)
                    elif pcm.size:
                        accepted_s += seconds
                        session.push_audio(pcm, SAMPLE_RATE)
            elif msg.type == WSMsgType.TEXT:
                raise protocol.ProtocolError("text frames are not part of the protocol: send binary messages")
            elif msg.type == WSMsgType.ERROR:
                exc = ws.exception()
                if exc is not None and "size" in str(exc).lower():
                    raise protocol.ProtocolError(
                        f"message over the {self.config.max_message_bytes}-byte limit"
                    )
                return "connection error"
            else:  # CLOSE, CLOSING, CLOSED
                return "client closed"

    async def _send_loop(self, ws: web.WebSocketResponse, output: WebSocketOutput) -> None:
        while True:
            message = await output.queue.get()
            if message is None or ws.closed:
                return
            try:
                await ws.send_bytes(message)
            except (ConnectionError, RuntimeError):
                return

    async def _metrics_loop(
        self, ws: web.WebSocketResponse, session: Session | CascadeSession, output: WebSocketOutput
    ) -> None:
        while True:
            await asyncio.sleep(self.config.metrics_interval_s)
            if self.failure and isinstance(
                session, Session
            ):  # the front-end died: tell the client rather than leave it in silence
                await _close_with_error(ws, f"the front-end stopped: {self.failure}")
                return
            snapshot = session.metrics.snapshot()
            snapshot["outgoing_dropped"] = output.dropped
            output.on_event(MetricsUpdate(values=snapshot))


async def _close_with_error(ws: web.WebSocketResponse, message: str) -> None:
    if ws.closed:
        return
    with contextlib.suppress(Exception):
        await ws.send_bytes(protocol.error_message(SessionError(message)))
        await ws.close(message=message[:120].encode("utf-8"))


def _default_static_dir() -> Path:
    return Path(str(resources.files("kame.server").joinpath("static")))
