"""``kame serve``: the voice server with the web client, for KAME, the cascade, or both."""

from __future__ import annotations

import argparse
import logging

from kame.cli.flags import (
    OracleStreamConflict,
    add_backend_arguments,
    add_cascade_arguments,
    add_frontend_arguments,
    backend_from_args,
    cascade_from_args,
    oracle_stream_from_args,
    pipelines_from_arg,
    sampling_from_args,
    sampling_overrides,
)

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="serve /api/chat (Moshi protocol) and the web client")
    add_frontend_arguments(parser)
    add_backend_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8998)
    add_cascade_arguments(parser)
    parser.add_argument(
        "--pipeline", type=pipelines_from_arg, default=("kame",),
        help="what the server offers: kame | cascade | kame,cascade (the first is the default; a client "
        "picks with /api/chat?pipeline=NAME)",
    )  # fmt: skip
    parser.add_argument(
        "--max-sessions", type=int, default=2, help="front-end batch size (concurrent KAME sessions)"
    )
    parser.add_argument(
        "--max-cascade-sessions", type=int, default=4, help="concurrent cascade sessions (no front-end slot)"
    )
    parser.add_argument("--when-full", choices=["reject", "queue"], default="reject")
    parser.add_argument("--queue-size", type=int, default=8)
    parser.add_argument("--idle-timeout", type=float, default=15.0, help="seconds without a client message")
    parser.add_argument("--timeline-dir", default=None, help="write each session's timeline (JSONL) here")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads for the front-end (default: 1 on CPU)"
    )
    parser.add_argument(
        "--frame-clock", choices=["process", "thread"], default="process",
        help="step the front-end in a child process (default; its own interpreter lock) or a thread",
    )  # fmt: skip
    parser.add_argument(
        "--audio-workers", type=int, default=0,
        help="processes that encode reply audio (Opus) for all sessions; 0 (default): in the server "
        "process. sphn's encoder holds the interpreter lock, so on a many-core machine serving many "
        "sessions, workers take it off the server's one interpreter",
    )  # fmt: skip
    access = parser.add_argument_group("access and deployment")
    access.add_argument(
        "--auth-token", default=None,
        help="the token clients must present (or set KAME_AUTH_TOKEN), as ?token= or Authorization: Bearer",
    )  # fmt: skip
    access.add_argument("--auth-tokens", default=None, metavar="FILE",
                        help="accepted tokens, one per line (# comments); re-read on SIGHUP")  # fmt: skip
    access.add_argument(
        "--no-auth", action="store_true",
        help="serve without a token even off loopback (anyone who reaches the port gets a session)",
    )  # fmt: skip
    access.add_argument(
        "--allowed-origins", default="",
        help="comma-separated origins (https://app.example.com) whose pages may open sessions, "
        "besides the server's own",
    )  # fmt: skip
    access.add_argument(
        "--trusted-proxy", action="store_true",
        help="behind a reverse proxy: believe its X-Forwarded-Host and X-Forwarded-For",
    )  # fmt: skip
    access.add_argument("--ssl-cert", default=None, help="PEM certificate (chain): serve https/wss")
    access.add_argument("--ssl-key", default=None, help="PEM private key of --ssl-cert")
    access.add_argument("--max-per-client", type=int, default=8,
                        help="concurrent connections per client address (0: no limit)")  # fmt: skip
    access.add_argument("--handshake-timeout", type=float, default=10.0,
                        help="seconds for a request head, a TLS handshake, a session start")  # fmt: skip
    access.add_argument("--drain-timeout", type=float, default=30.0,
                        help="on SIGTERM, seconds live sessions may go on")  # fmt: skip
    access.add_argument("--max-failed-starts", type=int, default=5,
                        help="failed front-end restarts in a row before giving up")  # fmt: skip
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from kame import heap

    heap.fix_mmap_threshold()  # before the models load: a long-running server's RSS stays flat
    heap.limit_arenas()  # before any thread starts
    import torch

    from kame.server.app import KameServer, ServerConfig
    from kame.server.run import TLSConfigError, serve, ssl_context
    from kame.server.security import AuthConfigError

    if bool(args.ssl_cert) != bool(args.ssl_key):
        raise SystemExit("kame serve: --ssl-cert and --ssl-key go together")
    try:
        policy = access_policy(args)
        context = ssl_context(args.ssl_cert, args.ssl_key) if args.ssl_cert else None
        config = ServerConfig(
            host=args.host, port=args.port, when_full=args.when_full, queue_size=args.queue_size,
            idle_timeout_s=args.idle_timeout, timeline_dir=args.timeline_dir,
            max_per_client=args.max_per_client or None, handshake_timeout_s=args.handshake_timeout,
            drain_timeout_s=args.drain_timeout, max_failed_starts=args.max_failed_starts,
            pipelines=args.pipeline, max_cascade_sessions=args.max_cascade_sessions,
            audio_workers=args.audio_workers, collect_garbage=True,
        )  # fmt: skip
    except (AuthConfigError, TLSConfigError, ValueError) as exc:
        raise SystemExit(f"kame serve: {exc}") from exc
    torch.set_grad_enabled(False)
    kame = "kame" in args.pipeline
    backend = backend_from_args(args) if kame else None
    cascade = cascade_from_args(args, backend) if "cascade" in args.pipeline else None
    stepper = make_stepper(args) if kame else None
    server = KameServer(stepper, backend, config, policy=policy, cascade=cascade)
    scheme = "https" if context else "http"

    def ready(port: int) -> None:
        url = f"{scheme}://{_url_host(args.host)}:{port}/"
        print(f"kame: serving on {url} (WebSocket /api/chat, /healthz, /metrics)", flush=True)
        if getattr(args, "_generated_token", None):
            # Like Jupyter: the only place the generated token appears. Nothing else logs it.
            print(f"kame: open {url}?token={args._generated_token}", flush=True)

    return asyncio.run(serve(server, args.host, args.port, ssl_context=context, on_ready=ready))


def access_policy(args: argparse.Namespace):
    """Tokens and origins from the flags; off loopback with no token, a generated one (unless --no-auth)."""
    from kame.server.security import AccessPolicy, generate_token, is_loopback, tokens_from_sources

    tokens = tokens_from_sources(args.auth_token, args.auth_tokens)
    loopback = is_loopback(args.host)
    if args.no_auth:
        if tokens.required:
            raise SystemExit("kame serve: --no-auth contradicts --auth-token/--auth-tokens/KAME_AUTH_TOKEN")
        logger.warning("--no-auth: anyone who can reach %s:%s gets a session", args.host, args.port)
    elif not tokens.required and not loopback:
        args._generated_token = generate_token()
        tokens = tokens_from_sources(args._generated_token, None)
        logger.warning("bound to %s with no token given: sessions need the generated token", args.host)
    origins = [o.strip() for o in args.allowed_origins.split(",") if o.strip()]
    return AccessPolicy(tokens, origins, trusted_proxy=args.trusted_proxy, loopback=loopback)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        import socket

        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def make_stepper(args: argparse.Namespace):
    """The frame clock: in a child process that loads the front-end itself, or on a thread here."""
    from kame.runtime.scheduler import FrameStepper, FrontendProcessSpec, ProcessStepper, warm_up

    if args.frame_clock == "process":
        if args.oracle_stream == "off" and not args.no_backend:
            raise OracleStreamConflict(
                "--oracle-stream off feeds no oracles, but every session has a back-end; "
                "add --no-backend or drop --oracle-stream off"
            )
        spec = FrontendProcessSpec(
            frontend=str(args.frontend), device=args.device, lora=args.lora, max_sessions=args.max_sessions,
            sampling=sampling_overrides(args), seed=args.seed, threads=_threads(args),
            oracle_stream=args.oracle_stream, has_oracle_source=not args.no_backend,
        )  # fmt: skip
        logger.info("front-end: %d slots on %s, in a child process", args.max_sessions, args.device)
        return ProcessStepper(spec)
    import torch

    from kame.frontend.checkpoint import load_frontend
    from kame.frontend.engine import FrontendEngine

    if args.seed is not None:
        torch.manual_seed(args.seed)
    if _threads(args):
        torch.set_num_threads(_threads(args))
    frontend = load_frontend(args.frontend, device=args.device, lora_weights=args.lora)
    engine = FrontendEngine(
        frontend,
        max_sessions=args.max_sessions,
        sampling=sampling_from_args(args, frontend),
        oracle_stream=oracle_stream_from_args(args, frontend, has_oracle_source=not args.no_backend),
    )
    logger.info("warming up the front-end (%d slots on %s)", args.max_sessions, engine.device)
    warm_up(engine)
    return FrameStepper(engine)


def _threads(args: argparse.Namespace) -> int | None:
    """On a CPU the front-end gets one thread: a second one stalls whenever the back-end is busy."""
    if args.threads is not None:
        return args.threads
    return 1 if str(args.device).startswith("cpu") else None
