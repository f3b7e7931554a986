"""Running a ``KameServer`` on a socket: TLS, a bounded handshake time, signals and a graceful drain.

``Listener`` owns the listening socket. Every connection must send a complete HTTP request head
within the handshake time (and finish its TLS handshake within it), or it is closed: half-open
sockets and slow-loris clients cannot pile up. ``serve`` runs until SIGTERM/SIGINT (then drains:
exit 0) or until the front-end fails for good with a thread frame clock (exit 1). SIGHUP re-reads
the token file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from kame.server.app import KameServer
from kame.server.security import RedactingAccessLogger

logger = logging.getLogger(__name__)


class TLSConfigError(ValueError):
    """A certificate or key that cannot be loaded."""


def ssl_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or newer) from PEM files."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load --ssl-cert {cert} / --ssl-key {key}: {exc}") from exc
    return context


class Listener:
    """The listening socket of an ``AppRunner``, with the handshake watchdog."""

    def __init__(self, runner: web.AppRunner, *, handshake_timeout_s: float) -> None:
        self.runner = runner
        self.handshake_timeout_s = handshake_timeout_s
        self._server: asyncio.base_events.Server | None = None
        self._spoke: set[int] = set()  # connections (their handlers' ids) that sent a request head
        self.expired = 0  # connections closed for not finishing their handshake in time
        runner.app.middlewares.append(self._mark)

    @web.middleware
    async def _mark(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        self._spoke.add(id(request.protocol))
        return await handler(request)

    async def start(self, host: str, port: int, ssl: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        server = self.runner.server
        assert server is not None, "runner.setup() first"

        def connection() -> asyncio.Protocol:
            handler = server()
            loop.call_later(self.handshake_timeout_s, self._expire, handler)
            return handler

        self._server = await loop.create_server(
            connection, host, port, ssl=ssl, backlog=128,
            ssl_handshake_timeout=self.handshake_timeout_s if ssl else None,
        )  # fmt: skip

    def _expire(self, handler: asyncio.Protocol) -> None:
        if id(handler) in self._spoke:
            self._spoke.discard(id(handler))
            return
        transport = getattr(handler, "transport", None)
        if transport is not None and not transport.is_closing():
            self.expired += 1
            transport.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting connections (those open go on)."""
        if self._server is not None:
            self._server.close()
            self._server = None


async def serve(
    server: KameServer,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> int:
    """Serve until a signal (drain, then 0) or a front-end failure the server cannot recover from (1)."""
    app = server.app()
    runner = web.AppRunner(app, access_log_class=RedactingAccessLogger, handle_signals=False)
    listener = Listener(runner, handshake_timeout_s=server.config.handshake_timeout_s)
    await runner.setup()  # loads the back-end and starts the front-end
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = []
    for number, action in (
        (signal.SIGTERM, stop.set),
        (signal.SIGINT, stop.set),
        (signal.SIGHUP, server.policy.tokens.reload),
    ):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(number, action)
            signals.append(number)
    try:
        await listener.start(host, port, ssl_context)
        if on_ready is not None:
            on_ready(listener.port)
        stopping = asyncio.create_task(stop.wait())
        fatal = asyncio.create_task(server.fatal_event.wait())
        await asyncio.wait([stopping, fatal], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        fatal.cancel()
        await listener.stop()
        if server.fatal:
            logger.critical("kame serve stops: %s", server.fatal)
            return 1
        cut = await server.drain()
        logger.info("drained: %d sessions had to be ended", cut)
        return 0
    finally:
        for number in signals:
            loop.remove_signal_handler(number)
        await runner.cleanup()
