"""``kame infer``: offline front-end inference over a recording with an oracle script."""

from __future__ import annotations

import argparse

from kame.frames import SAMPLE_RATE
from kame.frontend.checkpoint import DEFAULT_FRONTEND


def add_frontend_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every command that runs the front-end shares."""
    parser.add_argument(
        "--frontend",
        default=DEFAULT_FRONTEND,
        help="checkpoint folder, hf://owner/name, or tiny (random, CPU)",
    )
    parser.add_argument("--lora", default=None, help="LoRA weights (safetensors) for the front-end")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--greedy", action="store_true", help="argmax sampling: deterministic output")
    parser.add_argument("--temp", type=float, default=None, help="audio temperature (default 0.8)")
    parser.add_argument("--temp-text", type=float, default=None, help="text temperature (default 0.7)")
    parser.add_argument("--top-k", type=int, default=None, help="audio top-k (default 250)")
    parser.add_argument("--top-k-text", type=int, default=None, help="text top-k (default 25)")
    parser.add_argument(
        "--oracle-stream",
        choices=("auto", "on", "off"),
        default="auto",
        help="feed the oracle stream (on: pad 3 between oracles, as released), or not (off: -1 on every "
        "step, stock Moshi bit for bit); auto: off only for plain Moshi weights with no oracle source",
    )


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


class OracleStreamConflict(ValueError):
    """--oracle-stream off together with a source of oracles."""


def oracle_stream_from_args(args: argparse.Namespace, frontend, has_oracle_source: bool) -> bool:
    """Resolve ``--oracle-stream`` for a loaded front-end (``auto``: see ``default_oracle_stream``)."""
    from kame.frontend.generator import default_oracle_stream

    choice = getattr(args, "oracle_stream", "auto")
    if choice == "off" and has_oracle_source:
        raise OracleStreamConflict(
            "--oracle-stream off feeds no oracles, but oracles were given (a script or a back-end); "
            "drop --oracle-stream off, or run without them (--no-backend, no --oracle-script)"
        )
    if choice == "auto":
        return default_oracle_stream(not frontend.upgraded_from_moshi, has_oracle_source)
    return choice == "on"


def sampling_overrides(args: argparse.Namespace) -> dict:
    """The sampling flags that were given (the others come from the checkpoint or moshi's defaults)."""
    flags = {
        "greedy": args.greedy or None, "temp": args.temp, "temp_text": args.temp_text, "top_k": args.top_k,
        "top_k_text": args.top_k_text,
    }  # fmt: skip
    return {k: v for k, v in flags.items() if v is not None}


def sampling_from_args(args: argparse.Namespace, frontend=None):
    """Sampling: moshi's defaults, then the checkpoint's ``lm_gen_config``, then the flags."""
    from kame.frontend.generator import SamplingConfig

    return SamplingConfig.merged(
        frontend.lm_gen_config if frontend is not None else {}, **sampling_overrides(args)
    )


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
