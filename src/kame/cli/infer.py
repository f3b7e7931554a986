"""``kame infer``: offline front-end inference over a recording with an oracle script."""

from __future__ import annotations

import argparse

from kame.cli.flags import add_frontend_arguments, oracle_stream_from_args, sampling_from_args
from kame.frames import SAMPLE_RATE

INFER_DESCRIPTION = """\
Run the front-end over a recording, applying a script of timed oracle operations.

Input audio: any file libsndfile reads. Channels are averaged to mono, then resampled to 24 kHz with
soxr (high quality); the last partial 80 ms frame is padded with silence.

Output timing (the project's one convention): the reply WAV is 24 kHz, on the input's clock, and at
least as long as the input. The audio of the step that consumed input frame s (input time
[80 s, 80 s + 80) ms) starts at 80 (s + 1) ms, the earliest moment it could be heard.

Oracle script: JSON Lines {"time", "op": reset|append|end, "text"}; an operation at `time` is applied
before the step of frame floor(time * 12.5). Each oracle's text is complete after its last operation
(end is never needed)."""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "infer",
        help="run the front-end offline on a recording with an oracle script",
        description=INFER_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", help="the user's audio (any sample rate / channel count)")
    parser.add_argument("--oracle-script", default=None, help="JSONL of {time, op, text} oracle operations")
    parser.add_argument("--output", required=True, help="WAV file for the assistant's audio (24 kHz)")
    parser.add_argument("--tokens", default=None, help="JSON file with every step's fed and produced tokens")
    add_frontend_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from kame.audio.io import load_audio, write_wav
    from kame.frontend.checkpoint import load_frontend
    from kame.frontend.infer import run_inference, write_tokens_json
    from kame.frontend.oracle_script import load_oracle_script

    torch.set_grad_enabled(False)
    audio = load_audio(args.input)
    script = load_oracle_script(args.oracle_script) if args.oracle_script else []
    frontend = load_frontend(args.frontend, device=args.device, lora_weights=args.lora)
    oracle_stream = oracle_stream_from_args(args, frontend, has_oracle_source=bool(script))
    result = run_inference(
        frontend,
        audio,
        script,
        sampling_from_args(args, frontend),
        seed=args.seed,
        oracle_stream=oracle_stream,
    )
    write_wav(args.output, result.audio)
    if args.tokens:
        write_tokens_json(args.tokens, result)
    print(f"wrote {args.output} ({len(result.audio) / SAMPLE_RATE:.2f} s, {len(result.frames)} frames)")
    if result.text:
        print(f"assistant text: {result.text}")
    if result.skipped_oracle_tokens:
        print(f"{result.skipped_oracle_tokens} oracle tokens arrived after their frame and were skipped")
    return 0
