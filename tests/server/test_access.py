"""Who gets a session: tokens, origins, TLS, the per-client limit and the handshake time bound.

Real servers on 127.0.0.1 (the tiny front-end on a frame-clock thread, served through ``Listener``
as ``kame serve`` does) and real aiohttp clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import socket
import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from kame.frontend.checkpoint import load_frontend
from kame.frontend.engine import FrontendEngine
from kame.runtime.scheduler import FrameStepper
from kame.server.app import KameServer, ServerConfig
from kame.server.run import Listener, ssl_context
from kame.server.security import (
    AccessPolicy,
    AuthConfigError,
    RedactingAccessLogger,
    TokenStore,
    is_loopback,
)

TOKEN = "s3cret-token-one"


@contextlib.asynccontextmanager
async def listening(
    checkpoint: str,
    policy: AccessPolicy | None = None,
    *,
    tls: ssl.SSLContext | None = None,
    max_sessions: int = 4,
    **config,
) -> AsyncIterator[tuple[KameServer, Listener, str]]:
    engine = FrontendEngine(load_frontend(checkpoint), max_sessions=max_sessions)
    server = KameServer(FrameStepper(engine), None, ServerConfig(**config), policy=policy)
    runner = web.AppRunner(server.app(), access_log_class=RedactingAccessLogger)
    listener = Listener(runner, handshake_timeout_s=server.config.handshake_timeout_s)
    await runner.setup()
    await listener.start("127.0.0.1", 0, tls)
    scheme = "https" if tls else "http"
    try:
        yield server, listener, f"{scheme}://127.0.0.1:{listener.port}"
    finally:
        await listener.stop()
        await runner.cleanup()
        engine.close()


async def upgrade(
    http: aiohttp.ClientSession, url: str, *, query: str = "", headers: dict | None = None, **kwargs
) -> int:
    """The HTTP status of a WebSocket upgrade to /api/chat (101 = a session: its handshake arrived)."""
    try:
        async with http.ws_connect(f"{url}/api/chat{query}", headers=headers or {}, **kwargs) as ws:
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.BINARY and msg.data == b"\x00", msg
            return 101
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


def test_tokens_query_bearer_wrong_missing_and_a_reloaded_file(tiny_checkpoint, tmp_path, caplog):
    token_file = tmp_path / "tokens"
    token_file.write_text("# one per line\nfile-token-one\n")
    policy = AccessPolicy(TokenStore([TOKEN], token_file))

    async def scenario():
        async with listening(tiny_checkpoint, policy) as (_, _, url), aiohttp.ClientSession() as http:
            bearer = {"Authorization": "Bearer file-token-one"}
            statuses = {
                "missing": await upgrade(http, url),
                "wrong": await upgrade(http, url, query="?token=s3cret-token-two"),
                "wrong bearer": await upgrade(http, url, headers={"Authorization": "Bearer nope-nope-nope"}),
                "query": await upgrade(http, url, query=f"?events=1&token={TOKEN}"),
                "bearer from file": await upgrade(http, url, headers=bearer),
                "subprotocol": await upgrade(
                    http, url, protocols=("kame", f"kame.token.{TOKEN.encode().hex()}")
                ),
                "wrong subprotocol": await upgrade(http, url, protocols=("kame", "kame.token.6e6f706e6f70")),
            }
            refusal = await http.get(f"{url}/api/chat")  # plain GET: the refusal's body
            body, challenge = await refusal.json(), refusal.headers.get("WWW-Authenticate")
            token_file.write_text("file-token-two\n")
            policy.tokens.reload()  # what SIGHUP does
            statuses["old file token"] = await upgrade(http, url, headers=bearer)
            statuses["new file token"] = await upgrade(http, url, query="?token=file-token-two")
            statuses["flag token still"] = await upgrade(http, url, query=f"?token={TOKEN}")
            token_file.write_text("")  # a broken file keeps the previous tokens
            policy.tokens.reload()
            statuses["after a bad reload"] = await upgrade(http, url, query="?token=file-token-two")
            health = await http.get(f"{url}/healthz")
            metrics = await http.get(f"{url}/metrics")  # bound to loopback: open
            return statuses, body, challenge, health.status, metrics.status

    with caplog.at_level(logging.INFO):
        statuses, body, challenge, health, metrics = asyncio.run(scenario())
    assert statuses == {
        "missing": 401, "wrong": 401, "wrong bearer": 401, "query": 101, "bearer from file": 101,
        "subprotocol": 101, "wrong subprotocol": 401,
        "old file token": 401, "new file token": 101, "flag token still": 101, "after a bad reload": 101,
    }  # fmt: skip
    assert "token" in body["error"] and challenge.startswith("Bearer")
    assert health == 200 and metrics == 200
    assert "GET /api/chat" in caplog.text  # the access log ran...
    for secret in (TOKEN, "file-token-one", "file-token-two", "s3cret-token-two"):
        assert secret not in caplog.text  # ...without a single token in it


def test_metrics_need_the_token_off_loopback(tiny_checkpoint):
    policy = AccessPolicy(TokenStore([TOKEN]), loopback=False)

    async def scenario():
        async with listening(tiny_checkpoint, policy) as (_, _, url), aiohttp.ClientSession() as http:
            without = (await http.get(f"{url}/metrics")).status
            with_token = await http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            health = (await http.get(f"{url}/healthz")).status
            return without, with_token.status, await with_token.text(), health

    without, with_token, text, health = asyncio.run(scenario())
    assert without == 401 and with_token == 200 and "kame_frontend_restarts_total" in text
    assert health == 200  # load balancers never need a token


def test_foreign_origins_are_refused_with_or_without_a_token(tiny_checkpoint):
    policy = AccessPolicy(TokenStore([TOKEN]), allowed_origins=["https://app.example.com"])

    async def scenario():
        async with listening(tiny_checkpoint, policy) as (_, _, url), aiohttp.ClientSession() as http:
            q = f"?token={TOKEN}"
            return {
                "foreign": await upgrade(http, url, query=q, headers={"Origin": "https://evil.example"}),
                "foreign, no token": await upgrade(http, url, headers={"Origin": "https://evil.example"}),
                "null": await upgrade(http, url, query=q, headers={"Origin": "null"}),
                "own": await upgrade(http, url, query=q, headers={"Origin": url}),
                "own, no token": await upgrade(http, url, headers={"Origin": url}),
                "allowed": await upgrade(http, url, query=q, headers={"Origin": "https://app.example.com"}),
                "other port": await upgrade(
                    http, url, query=q, headers={"Origin": url.rsplit(":", 1)[0] + ":1"}
                ),
                "no origin, token": await upgrade(http, url, query=q),
                "no origin, no token": await upgrade(http, url),
            }

    assert asyncio.run(scenario()) == {
        "foreign": 403, "foreign, no token": 403, "null": 403, "own": 101, "own, no token": 401,
        "allowed": 101, "other port": 403, "no origin, token": 101, "no origin, no token": 401,
    }  # fmt: skip


def test_no_token_configured_lets_non_browsers_in_but_not_foreign_pages(tiny_checkpoint):
    async def scenario():
        async with listening(tiny_checkpoint) as (_, _, url), aiohttp.ClientSession() as http:
            return await upgrade(http, url), await upgrade(http, url, headers={"Origin": "http://evil.test"})

    assert asyncio.run(scenario()) == (101, 403)


def test_forwarded_host_counts_only_behind_a_trusted_proxy():
    headers = {
        "Host": "10.0.0.5:8998",
        "Origin": "https://voice.example.com",
        "X-Forwarded-Host": "voice.example.com",
        "X-Forwarded-For": "203.0.113.9, 10.0.0.1",
    }
    request = make_mocked_request("GET", "/api/chat", headers=headers)
    direct, proxied = AccessPolicy(), AccessPolicy(trusted_proxy=True)
    assert not direct.origin_allowed(request)  # anyone can send X-Forwarded-Host
    assert proxied.origin_allowed(request)
    assert proxied.client_address(request) == "10.0.0.1"  # what the proxy itself appended
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.com")
    with pytest.raises(AuthConfigError, match="at least 8"):
        TokenStore(["short"])
    with pytest.raises(AuthConfigError, match="not an origin"):
        AccessPolicy(allowed_origins=["app.example.com"])


def _self_signed(tmp_path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 made with ``cryptography``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kame test")])
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    where = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - day).not_valid_after(now + day)
        .add_extension(where, critical=False).sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


def test_tls_with_a_self_signed_certificate(tiny_checkpoint, tmp_path):
    cert, key = _self_signed(tmp_path)
    client_tls = ssl.create_default_context(cafile=cert)

    async def scenario():
        async with listening(tiny_checkpoint, tls=ssl_context(cert, key)) as (_, _, url):
            async with aiohttp.ClientSession() as http:
                secure = await upgrade(http, url, ssl=client_tls)  # wss:// with the certificate checked
                health = await (await http.get(f"{url}/healthz", ssl=client_tls)).json()
                with pytest.raises(aiohttp.ClientError):
                    await http.get(url.replace("https://", "http://") + "/healthz")  # plain HTTP: no
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await http.get(f"{url}/healthz")  # an unknown certificate is not trusted
            return secure, health

    secure, health = asyncio.run(scenario())
    assert secure == 101 and health["status"] == "ok"
    from kame.server.run import TLSConfigError

    with pytest.raises(TLSConfigError, match="cannot load"):
        ssl_context(key, cert)  # swapped


def test_per_client_limit_and_bounded_handshake(tiny_checkpoint):
    async def scenario():
        async with listening(tiny_checkpoint, max_sessions=4, max_per_client=2, handshake_timeout_s=0.5) as (
            server,
            listener,
            url,
        ):
            port = listener.port
            # Half-open sockets that never send a request head are closed after the handshake time.
            silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
            async with aiohttp.ClientSession() as http:
                first = await http.ws_connect(f"{url}/api/chat")
                second = await http.ws_connect(f"{url}/api/chat")
                assert (await first.receive(timeout=10)).data == b"\x00"
                assert (await second.receive(timeout=10)).data == b"\x00"
                third = await upgrade(http, url)  # a third from the same address
                body = await (await http.get(f"{url}/api/chat")).json()
                await asyncio.sleep(1.0)  # past the handshake time: the sessions are not touched
                alive = not first.closed and not second.closed
                await first.close()
                await asyncio.sleep(0.3)
                after_one_left = await upgrade(http, url)
                await second.close()
            loop = asyncio.get_running_loop()
            closed = []
            for sock in silent:
                sock.settimeout(2)
                closed.append(await loop.run_in_executor(None, sock.recv, 10) == b"")
                sock.close()
            return third, body, alive, after_one_left, closed, listener.expired, dict(server.limiter.counts)

    third, body, alive, after_one_left, closed, expired, counts = asyncio.run(scenario())
    assert third == 429 and "at most 2 connections per client" in body["error"]
    assert alive and after_one_left == 101
    assert all(closed) and expired >= 3
    assert counts == {}  # every connection was released
