"""``kame serve``: the voice server with the web client."""

from __future__ import annotations

import argparse
import logging

from kame.cli.infer import add_frontend_arguments

logger = logging.getLogger(__name__)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every command that runs the back-end shares."""
    parser.add_argument(
        "--llm",
        default="local",
        help="local | local:PATH.gguf | openai:MODEL | anthropic:MODEL | gemini:MODEL",
    )
    parser.add_argument("--stt", default="whisper", help="whisper[:MODEL] | pocketsphinx | kyutai")
    parser.add_argument(
        "--no-backend", action="store_true", help="front-end only: no STT, no LLM, no oracles"
    )
    parser.add_argument("--oracle-policy", choices=["restart", "parallel"], default="restart")
    parser.add_argument("--system-prompt", default=None, help="file with the oracle LLM's system prompt")


def backend_from_args(args: argparse.Namespace):
    if args.no_backend:
        return None
    from kame.backend.oracle_engine import OracleConfig, OraclePolicy
    from kame.runtime.backend import Backend, BackendSpec

    oracle = OracleConfig(policy=OraclePolicy(mode=args.oracle_policy), system_prompt_file=args.system_prompt)
    return Backend.from_spec(BackendSpec(stt=args.stt, llm=args.llm, oracle=oracle))


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="serve /api/chat (Moshi protocol) and the web client")
    add_frontend_arguments(parser)
    add_backend_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8998)
    parser.add_argument(
        "--max-sessions", type=int, default=2, help="front-end batch size (concurrent sessions)"
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
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch
    from aiohttp import web

    from kame.server.app import KameServer, ServerConfig

    torch.set_grad_enabled(False)
    config = ServerConfig(
        host=args.host, port=args.port, when_full=args.when_full, queue_size=args.queue_size,
        idle_timeout_s=args.idle_timeout, timeline_dir=args.timeline_dir,
    )  # fmt: skip
    server = KameServer(make_stepper(args), backend_from_args(args), config)
    print(
        f"kame: serving on http://{args.host}:{args.port}/ (WebSocket /api/chat, /healthz, /metrics)",
        flush=True,
    )
    web.run_app(server.app(), host=args.host, port=args.port, print=None)
    return 0


def make_stepper(args: argparse.Namespace):
    """The frame clock: in a child process that loads the front-end itself, or on a thread here."""
    from kame.cli.infer import oracle_stream_from_args, sampling_from_args, sampling_overrides
    from kame.runtime.scheduler import FrameStepper, FrontendProcessSpec, ProcessStepper, warm_up

    if args.frame_clock == "process":
        if args.oracle_stream == "off" and not args.no_backend:
            from kame.cli.infer import OracleStreamConflict

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
