"""``kame simulate``: one session (KAME or the cascade) over a recording, on a virtual (or real) clock."""

from __future__ import annotations

import argparse
import asyncio

from kame.cli.flags import (
    add_backend_arguments,
    add_cascade_arguments,
    add_frontend_arguments,
    add_pipeline_argument,
    backend_from_args,
    cascade_from_args,
    oracle_stream_from_args,
    sampling_from_args,
)


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
    add_pipeline_argument(parser)
    add_frontend_arguments(parser)
    add_backend_arguments(parser)
    add_cascade_arguments(parser)
    parser.set_defaults(func=_run)


def run_cascade_simulation(args: argparse.Namespace, audio, timeline_path: str):
    """Simulate one cascade session (STT, LLM and reply voice named by ``args``) over ``audio``."""
    from kame.runtime.simulate import SimulationConfig, simulate_cascade

    if args.no_backend:
        raise SystemExit("kame simulate: the cascade is all back-end; drop --no-backend")
    cascade = cascade_from_args(args)
    config = SimulationConfig(realtime=args.realtime, max_reply_s=args.max_reply)

    async def run():
        try:
            await cascade.load()
            return await simulate_cascade(cascade, audio, config, timeline_path=timeline_path)
        finally:
            await cascade.aclose()

    return asyncio.run(run())


def run_simulation(args: argparse.Namespace, audio, timeline_path: str):
    """Load the pipeline named by ``args`` and simulate one session over ``audio``."""
    if getattr(args, "pipeline", "kame") == "cascade":
        return run_cascade_simulation(args, audio, timeline_path)
    import torch

    from kame.frontend.checkpoint import load_frontend
    from kame.frontend.engine import FrontendEngine
    from kame.runtime.simulate import SimulationConfig, simulate

    torch.set_grad_enabled(False)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    frontend = load_frontend(args.frontend, device=args.device, lora_weights=args.lora)
    backend = backend_from_args(args)
    config = SimulationConfig(realtime=args.realtime, max_reply_s=args.max_reply)

    async def run():
        try:
            if backend is not None:
                await backend.load()
            oracle_stream = oracle_stream_from_args(args, frontend, has_oracle_source=backend is not None)
            sampling = sampling_from_args(args, frontend)
            with FrontendEngine(frontend, 1, sampling, oracle_stream=oracle_stream) as engine:
                return await simulate(engine, backend, audio, config, timeline_path=timeline_path)
        finally:
            if backend is not None:
                await backend.aclose()

    return asyncio.run(run())


def write_outputs(result, output: str, stereo: str | None) -> None:
    import numpy as np
    import soundfile as sf

    from kame.audio.io import write_wav
    from kame.frames import SAMPLE_RATE

    write_wav(output, result.audio)
    if stereo:
        n = min(len(result.audio), len(result.user_audio))
        both = np.clip(np.stack([result.user_audio[:n], result.audio[:n]], axis=1), -1, 1)
        sf.write(stereo, both, SAMPLE_RATE, subtype="PCM_16")


def _run(args: argparse.Namespace) -> int:
    from kame.audio.io import load_audio

    result = run_simulation(args, load_audio(args.input), args.timeline)
    write_outputs(result, args.output, args.stereo)
    print_summary(result)
    return 0


def print_summary(result) -> None:
    from kame.eval.latency import summarize_timeline
    from kame.frames import FRAME_S

    summary = summarize_timeline(result.events)
    print(f"frames: {result.frames} ({result.frames * FRAME_S:.2f} s)")
    for key, value in summary.items():
        print(f"{key}: {value}")
