"""The flags several ``kame`` commands share, and turning them into the objects they name.

One flag, one name, one default: the engines' defaults come from their registries, the oracle policy
is ``--oracle-policy`` everywhere.
"""

from __future__ import annotations

import argparse

from kame.backend.llm.registry import DEFAULT_LLM
from kame.backend.stt import DEFAULT_STT
from kame.errors import UserError
from kame.frontend.checkpoint import DEFAULT_FRONTEND


def add_frontend_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every command that runs the front-end shares."""
    parser.add_argument(
        "--frontend",
        default=DEFAULT_FRONTEND,
        help="checkpoint folder, hf://owner/name, tiny (the shipped CPU front-end: follows its oracles, "
        "voice is noise) or random:tiny",
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


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--stt`` and ``--llm``: the back-end's engines, as spec strings."""
    parser.add_argument(
        "--llm",
        default=DEFAULT_LLM,
        help="local (embedded SmolLM2) | local:PATH.gguf | openai:MODEL | anthropic:MODEL | gemini:MODEL",
    )
    parser.add_argument(
        "--stt",
        default=DEFAULT_STT,
        help="whisper (embedded tiny.en) | whisper:NAME_OR_PATH | pocketsphinx | kyutai[:REPO_OR_FOLDER]",
    )


def add_oracle_policy_argument(parser: argparse.ArgumentParser, *, old_name: bool = False) -> None:
    """``--oracle-policy`` (``old_name``: also accept ``--mode``, its older spelling on ``kame oracle``)."""
    parser.add_argument(
        "--oracle-policy",
        *(("--mode",) if old_name else ()),
        dest="oracle_policy",
        choices=("restart", "parallel"),
        default="restart",
        help="restart: one answer at a time; parallel: several, the newest to speak is adopted",
    )


def add_system_prompt_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--system-prompt", default=None, help="a text file replacing the oracle LLM's default system prompt"
    )


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every command that runs the back-end shares."""
    add_engine_arguments(parser)
    parser.add_argument(
        "--no-backend", action="store_true", help="front-end only: no STT, no LLM, no oracles"
    )
    add_oracle_policy_argument(parser)
    add_system_prompt_argument(parser)


def backend_from_args(args: argparse.Namespace):
    if args.no_backend:
        return None
    from kame.backend.oracle_engine import OracleConfig, OraclePolicy
    from kame.runtime.backend import Backend, BackendSpec

    oracle = OracleConfig(policy=OraclePolicy(mode=args.oracle_policy), system_prompt_file=args.system_prompt)
    return Backend.from_spec(BackendSpec(stt=args.stt, llm=args.llm, oracle=oracle))


class OracleStreamConflict(UserError, ValueError):
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


PIPELINES = ("kame", "cascade")


def add_cascade_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the cascade pipeline (``--llm``, ``--stt`` and their timeouts are shared with KAME's)."""
    parser.add_argument(
        "--reply-tts", default="piper", help="the cascade's voice: piper | piper:VOICE.onnx | espeak[:VOICE]"
    )
    parser.add_argument(
        "--turn-silence", type=float, default=0.6,
        help="seconds of silence (the STT's VAD) that end the user's turn in the cascade (default 0.6)",
    )  # fmt: skip
    parser.add_argument(
        "--cascade-system-prompt", default=None, help="file with the cascade LLM's system prompt"
    )


def pipelines_from_arg(value: str) -> tuple[str, ...]:
    """``kame``, ``cascade`` or ``kame,cascade`` (the first named is the default)."""
    names = tuple(name.strip().lower() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in PIPELINES]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"--pipeline {value!r}: name kame, cascade or both (kame,cascade), each once"
        )
    return names


def cascade_from_args(args: argparse.Namespace, backend=None):  # type: ignore[no-untyped-def]
    """The cascade named by ``args``; it shares the KAME back-end's STT and LLM when there is one."""
    from kame.audio.tts import create_tts
    from kame.backend.llm import create_llm
    from kame.backend.stt import create_stt
    from kame.runtime.cascade.pipeline import Cascade, CascadeConfig

    config = CascadeConfig(turn_silence_s=args.turn_silence, system_prompt_file=args.cascade_system_prompt)
    stt = backend.stt if backend is not None else create_stt(args.stt)
    llm = backend.llm if backend is not None else create_llm(args.llm)
    return Cascade(stt, llm, create_tts(args.reply_tts), config)


def add_pipeline_argument(parser: argparse.ArgumentParser) -> None:
    """``--pipeline`` of the commands that run one session (simulate, demo)."""
    parser.add_argument(
        "--pipeline", choices=PIPELINES, default="kame",
        help="kame: the tandem front-end + back-end (default); cascade: STT -> LLM -> TTS (no front-end)",
    )  # fmt: skip
