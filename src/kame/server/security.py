"""Who may use the server: access tokens, the browser's ``Origin``, and a per-client connection limit.

Tokens come from ``--auth-token``, ``KAME_AUTH_TOKEN`` or a file (one per line, re-read on SIGHUP) and
are accepted as ``?token=``, ``Authorization: Bearer`` or, from the web client (a browser cannot set
headers on a WebSocket, and logs the URL of one that fails), a ``kame.token.<hex>`` subprotocol.
They are compared in constant time and never logged: the access log writes request paths without their
query strings. A WebSocket upgrade from a page on another site is refused whatever its token
(cross-site WebSocket hijacking): any web page can open a socket to ``localhost``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

logger = logging.getLogger(__name__)

TOKEN_ENV = "KAME_AUTH_TOKEN"
MIN_TOKEN_CHARS = 8


class AuthConfigError(ValueError):
    """Tokens that cannot be used (an empty or unreadable file, a token too short to be secret)."""


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the server on this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def generate_token() -> str:
    """A random token like Jupyter's (48 hex digits)."""
    return secrets.token_hex(24)


def _check_token(token: str, where: str) -> str:
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise AuthConfigError(f"{where}: a token needs at least {MIN_TOKEN_CHARS} characters")
    if any(c.isspace() for c in token):
        raise AuthConfigError(f"{where}: a token cannot contain spaces")
    return token


class TokenStore:
    """The accepted tokens: given ones plus those of a file, which ``reload`` re-reads (SIGHUP)."""

    def __init__(self, tokens: list[str] | None = None, file: str | Path | None = None) -> None:
        self._fixed = [_check_token(t, "--auth-token") for t in tokens or [] if t]
        self.file = Path(file) if file is not None else None
        self._from_file: list[str] = []
        if self.file is not None:
            self._from_file = self._read_file()

    def _read_file(self) -> list[str]:
        assert self.file is not None
        try:
            lines = self.file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise AuthConfigError(f"cannot read the token file {self.file}: {exc.strerror}") from exc
        tokens = [
            _check_token(line, f"{self.file}:{number}")
            for number, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if not tokens:
            raise AuthConfigError(f"the token file {self.file} has no tokens (one per line; # comments)")
        return tokens

    def reload(self) -> int:
        """Re-read the token file; on an error the previous tokens stay (and the error is logged)."""
        if self.file is not None:
            try:
                self._from_file = self._read_file()
            except AuthConfigError as exc:
                logger.error("token file not reloaded, the previous tokens stay: %s", exc)
                return len(self._fixed) + len(self._from_file)
        count = len(self._fixed) + len(self._from_file)
        logger.info("access tokens reloaded: %d accepted", count)
        return count

    @property
    def required(self) -> bool:
        return bool(self._fixed or self._from_file)

    def __len__(self) -> int:
        return len(self._fixed) + len(self._from_file)

    def accepts(self, candidate: str | None) -> bool:
        """Constant-time comparison against every token (the time does not depend on which matched)."""
        if not candidate:
            return False
        given = candidate.encode("utf-8")
        matched = False
        for token in [*self._fixed, *self._from_file]:
            matched |= hmac.compare_digest(given, token.encode("utf-8"))
        return matched


SUBPROTOCOL = "kame"
TOKEN_SUBPROTOCOL_PREFIX = "kame.token."  # + the token's UTF-8 in hex


def request_token(request: web.BaseRequest) -> str | None:
    """The token a request carries: ``Authorization: Bearer X``, ``?token=X``, or (the web client's
    way: a browser logs failed WebSocket URLs in its console) a ``kame.token.<hex>`` subprotocol."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for offered in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        offered = offered.strip()
        if offered.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            try:
                return bytes.fromhex(offered.removeprefix(TOKEN_SUBPROTOCOL_PREFIX)).decode("utf-8")
            except ValueError:
                return None
    return request.query.get("token") or None


def _origin_netloc(origin: str) -> str | None:
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None  # "null" (sandboxed pages, file://) and anything odd is foreign
    return _normalise_netloc(parts.netloc, parts.scheme)


def _normalise_netloc(netloc: str, scheme: str = "http") -> str:
    netloc = netloc.strip().lower()
    default = ":443" if scheme == "https" else ":80"
    return netloc.removesuffix(default)


@dataclass
class AccessPolicy:
    """The server's access rules; ``check`` answers one HTTP request."""

    tokens: TokenStore = field(default_factory=TokenStore)
    allowed_origins: list[str] = field(default_factory=list)  # e.g. https://app.example.com
    trusted_proxy: bool = False  # believe X-Forwarded-Host (only behind a proxy that sets it)
    loopback: bool = True  # bound to loopback only: /metrics needs no token

    def __post_init__(self) -> None:
        self._allowed = set()
        for origin in self.allowed_origins:
            netloc = _origin_netloc(origin)
            if netloc is None:
                raise AuthConfigError(
                    f"--allowed-origins: {origin!r} is not an origin like https://host[:port]"
                )
            self._allowed.add((urlsplit(origin).scheme, netloc))

    def own_host(self, request: web.BaseRequest) -> str:
        if self.trusted_proxy:
            forwarded = request.headers.get("X-Forwarded-Host")
            if forwarded:
                return forwarded.split(",")[0]
        return request.headers.get("Host", "")

    def client_address(self, request: web.BaseRequest) -> str:
        """Who to count for ``--max-per-client``: the peer, or the address the trusted proxy saw."""
        if self.trusted_proxy:
            forwarded = request.headers.get("X-Forwarded-For")
            if forwarded:
                return forwarded.split(",")[-1].strip()  # the entry the proxy itself appended
        return request.remote or "unknown"

    def origin_allowed(self, request: web.BaseRequest) -> bool:
        """No ``Origin`` (not a browser) is fine; a browser's must be this server's own or allowed."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        netloc = _origin_netloc(origin)
        if netloc is None:
            return False
        scheme = urlsplit(origin).scheme
        if (scheme, netloc) in self._allowed:
            return True
        own = self.own_host(request)
        return bool(own) and netloc == _normalise_netloc(own, scheme)

    def authorised(self, request: web.BaseRequest) -> bool:
        return not self.tokens.required or self.tokens.accepts(request_token(request))

    def check_chat(self, request: web.BaseRequest) -> web.Response | None:
        """None if the WebSocket upgrade may proceed, else the refusal (403 foreign page, 401 token)."""
        if not self.origin_allowed(request):
            logger.warning(
                "refused a WebSocket from origin %r (%s)", request.headers.get("Origin"), request.remote
            )
            return web.json_response(
                {"error": "this page's origin may not use the server (add it with --allowed-origins)"},
                status=403,
            )
        if not self.authorised(request):
            return _unauthorised("a valid access token is required: ?token=... or Authorization: Bearer")
        return None

    def check_metrics(self, request: web.BaseRequest) -> web.Response | None:
        if self.loopback or self.authorised(request):
            return None
        return _unauthorised("/metrics needs the access token when the server is not bound to loopback")


def _unauthorised(message: str) -> web.Response:
    return web.json_response(
        {"error": message}, status=401, headers={"WWW-Authenticate": 'Bearer realm="kame"'}
    )


class ClientLimiter:
    """At most ``limit`` concurrent connections (handshakes included) per client address."""

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"--max-per-client must be at least 1, got {limit}")
        self.limit = limit
        self.counts: Counter[str] = Counter()

    def acquire(self, address: str) -> bool:
        if self.limit is not None and self.counts[address] >= self.limit:
            return False
        self.counts[address] += 1
        return True

    def release(self, address: str) -> None:
        self.counts[address] -= 1
        if self.counts[address] <= 0:
            del self.counts[address]


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp's access log without query strings (they may carry a token)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %.1f ms "%s"',
            request.remote, request.method, request.path, response.status, time * 1000,
            request.headers.get("User-Agent", "-"),
        )  # fmt: skip


def tokens_from_sources(token: str | None, file: str | None) -> TokenStore:
    """``--auth-token`` (or ``KAME_AUTH_TOKEN``) and ``--auth-tokens FILE``."""
    given = token if token is not None else os.environ.get(TOKEN_ENV)
    return TokenStore([given] if given else [], file)
