"""``kame simulate``: one session over a recording, on a virtual (or real) clock, offline."""

from __future__ import annotations

import argparse
import asyncio

from kame.cli.infer import add_frontend_arguments
from kame.cli.serve import add_backend_arguments


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("simulate", help="run the tandem system over a recording and write the timeline")
    parser.add_argument("input", help="the user's audio (any rate / channels)")
    parser.add_argument("--output", required=True, help="WAV file for the assistant's audio (24 kHz)")
    parser.add_argument("--timeline", required=True, help="JSONL file for every event of the session")
    parser.add_argument("--realtime", action="store_true", help="pace frames by the wall clock (as live)")
    parser.add_argument(
        "--max-reply", type=float, default=30.0, help="seconds after the user's audio, at most"
    )
    parser.add_argument(
        "--stereo", default=None, help="also write user (left) + assistant (right) to this WAV"
    )
    add_frontend_arguments(parser)
    add_backend_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from kame.audio.io import load_audio, write_wav
    from kame.cli.infer import sampling_from_args
    from kame.cli.serve import backend_from_args
    from kame.frontend.checkpoint import load_frontend
    from kame.frontend.engine import FrontendEngine
    from kame.runtime.simulate import SimulationConfig, simulate

    torch.set_grad_enabled(False)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    audio = load_audio(args.input)
    frontend = load_frontend(args.frontend, device=args.device, lora_weights=args.lora)
    backend = backend_from_args(args)
    config = SimulationConfig(realtime=args.realtime, max_reply_s=args.max_reply)

    async def run():
        try:
            if backend is not None:
                await backend.load()
            with FrontendEngine(frontend, 1, sampling_from_args(args)) as engine:
                return await simulate(engine, backend, audio, config, timeline_path=args.timeline)
        finally:
            if backend is not None:
                await backend.aclose()

    result = asyncio.run(run())
    write_wav(args.output, result.audio)
    if args.stereo:
        import soundfile as sf

        n = min(len(result.audio), len(result.user_audio))
        sf.write(
            args.stereo, np.stack([result.user_audio[:n], result.audio[:n]], axis=1), 24000, subtype="PCM_16"
        )
    _print_summary(result)
    return 0


def _print_summary(result) -> None:
    from kame.eval.latency import summarize_timeline

    summary = summarize_timeline(result.events)
    print(f"frames: {result.frames} ({result.frames * 0.08:.2f} s)")
    for key, value in summary.items():
        print(f"{key}: {value}")
