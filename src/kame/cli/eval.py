"""``kame eval``: the speech MT-Bench table (``mtbench``) and Full-Duplex-Bench timing (``duplex``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kame.frontend.checkpoint import DEFAULT_FRONTEND

MTBENCH_DESCRIPTION = """\
Ask every system the two-turn questions by speech, judge each reply as FastChat does, and write
answers.jsonl, judgments.jsonl, results.json and report.html to --out. Rerunning the same command
resumes: finished conversations and judgments are kept.

Systems: kame (front-end + back-end --llm), moshi (--moshi-frontend, no back-end, oracle stream off),
cascade (STT -> --llm -> --reply-tts, no front-end), oracle-text (the back-end's last complete oracle
in each kame turn: needs kame)."""


def _model_arguments(parser: argparse.ArgumentParser, *, moshi: bool = True) -> None:
    group = parser.add_argument_group("models")
    group.add_argument(
        "--frontend", default=DEFAULT_FRONTEND, help="kame's front-end: folder, hf://owner/name, tiny"
    )
    if moshi:
        from kame.eval.systems import DEFAULT_MOSHI

        group.add_argument(
            "--moshi-frontend", default=DEFAULT_MOSHI, help="the moshi system's weights (tiny offline)"
        )
    group.add_argument("--lora", default=None, help="LoRA weights for kame's front-end")
    group.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    group.add_argument("--seed", type=int, default=None, help="seed torch once at the start")
    group.add_argument("--greedy", action="store_true", help="argmax sampling in the front-ends")
    group.add_argument("--temp", type=float, default=None)
    group.add_argument("--temp-text", type=float, default=None)
    group.add_argument("--top-k", type=int, default=None)
    group.add_argument("--top-k-text", type=int, default=None)
    group.add_argument(
        "--llm", default="local", help="the back-end LLM: local | openai:MODEL | anthropic:MODEL | ..."
    )
    group.add_argument("--stt", default="whisper", help="the back-end's streaming STT")
    group.add_argument("--oracle-policy", choices=["restart", "parallel"], default="restart")
    group.add_argument("--system-prompt", default=None, help="file with the oracle LLM's system prompt")
    from kame.cli.flags import add_cascade_arguments

    add_cascade_arguments(group)  # the cascade system's voice, turn-end silence and prompt
    group.add_argument("--realtime", action="store_true", help="pace sessions by the wall clock")
    group.add_argument(
        "--max-reply", type=float, default=30.0, help="seconds a reply may run past the user's turn"
    )
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on a CPU)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="evaluate systems: speech MT-Bench, Full-Duplex-Bench timing")
    commands = parser.add_subparsers(dest="eval_command", required=True)

    mt = commands.add_parser(
        "mtbench",
        help="the paper's speech MT-Bench table for any systems",
        description=MTBENCH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mt.add_argument(
        "--systems", default="kame,moshi,cascade,oracle-text", help="comma-separated system names"
    )
    mt.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    mt.add_argument(
        "--questions", default="mtbench", help="mtbench (the 80 official) or a question.jsonl file"
    )
    mt.add_argument(
        "--categories", default=None, help="comma-separated (default: reasoning,stem,humanities for mtbench)"
    )
    mt.add_argument("--limit", type=int, default=None, help="at most N questions per category")
    mt.add_argument("--judge", default="local", help="the judge LLM spec (local is constrained, and weak)")
    mt.add_argument(
        "--judge-prompts", default="mtbench", help="mtbench (FastChat's) or a judge_prompts.jsonl"
    )
    mt.add_argument("--judge-attempts", type=int, default=3, help="asks per judgment while no rating parses")
    mt.add_argument("--tts", default="piper", help="the voice that speaks the questions")
    mt.add_argument(
        "--transcript",
        choices=["audio", "text"],
        default="audio",
        help="audio: Whisper on the reply audio (as the paper); text: the systems' own text",
    )
    mt.add_argument("--whisper", default="embedded", help="Whisper model for --transcript audio")
    mt.add_argument("--runs", type=int, default=1, help="repeat the whole evaluation N times and average")
    mt.add_argument("--workers", type=int, default=1, help="sessions (and judgments) run at once")
    mt.add_argument("--no-progress", action="store_true", help="no progress bars")
    _model_arguments(mt)
    mt.set_defaults(func=_run_mtbench)

    duplex = commands.add_parser(
        "duplex",
        help="answer Full-Duplex-Bench sample folders and score their timing",
        description="Answer every sample folder's input.wav (output.wav and output.json beside it) and "
        "score take-over rate and latency by Full-Duplex-Bench's definitions; results to "
        "DIR/results_<system>.json.",
    )
    duplex.add_argument("root", help="a Full-Duplex-Bench task folder (v1 or v1.5) of sample folders")
    duplex.add_argument("--system", default="kame", help="kame, moshi or cascade")
    duplex.add_argument(
        "--transcript", choices=["audio", "text"], default="audio",
        help="audio: Whisper on output.wav (default); text: the system's own text stream",
    )  # fmt: skip
    duplex.add_argument("--whisper", default="embedded", help="Whisper model for --transcript audio")
    duplex.add_argument("--no-progress", action="store_true")
    _model_arguments(duplex)
    duplex.set_defaults(func=_run_duplex)


def system_settings(args: argparse.Namespace):
    """The models the systems are made of, from the flags."""
    import torch

    from kame.cli.flags import sampling_overrides
    from kame.eval.systems import SystemSettings

    torch.set_grad_enabled(False)
    threads = (
        args.threads if args.threads is not None else (1 if str(args.device).startswith("cpu") else None)
    )
    if threads:
        torch.set_num_threads(threads)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    return SystemSettings(
        frontend=args.frontend,
        moshi_frontend=getattr(args, "moshi_frontend", None) or "",
        llm=args.llm,
        stt=args.stt,
        device=args.device,
        lora=args.lora,
        sampling=sampling_overrides(args),
        oracle_policy=args.oracle_policy,
        system_prompt=args.system_prompt,
        realtime=args.realtime,
        max_reply_s=args.max_reply,
        reply_tts=args.reply_tts,
        turn_silence_s=args.turn_silence,
        cascade_system_prompt=args.cascade_system_prompt,
    )


def _run_mtbench(args: argparse.Namespace) -> int:
    from kame.eval.mtbench import MTBenchConfig, run_mtbench

    config = MTBenchConfig(
        out=Path(args.out),
        systems=[s.strip() for s in args.systems.split(",") if s.strip()],
        questions=args.questions,
        categories=args.categories.split(",") if args.categories else None,
        limit=args.limit,
        judge=args.judge,
        judge_prompts=args.judge_prompts,
        judge_attempts=args.judge_attempts,
        tts=args.tts,
        transcript=args.transcript,
        whisper=args.whisper,
        runs=args.runs,
        workers=args.workers,
        progress=not args.no_progress,
        models=system_settings(args),
    )
    outcome = run_mtbench(config)
    print_table(outcome.results)
    for name, path in outcome.files.items():
        print(f"{name}: {path}")
    if outcome.failures:
        for what, why in outcome.failures:
            print(f"failed: {what}: {why}")
        print(f"{len(outcome.failures)} conversation(s) failed; rerun the same command to retry them")
        return 1
    return 0


def _run_duplex(args: argparse.Namespace) -> int:
    from kame.eval.duplex import DuplexConfig, run_duplex

    config = DuplexConfig(
        root=Path(args.root), system=args.system, transcript=args.transcript, whisper=args.whisper,
        progress=not args.no_progress, models=system_settings(args),
    )  # fmt: skip
    results, path = run_duplex(config)
    for task, summary in results["tasks"].items():
        latency = summary.get("latency")
        extra = "" if latency is None else f", latency {latency:.3f} s over {summary['latency_n']} take-overs"
        print(f"{task}: {summary['samples']} samples, take-over rate {summary['take_over_rate']:.3f}{extra}")
    if results["unscored"]:
        print(f"answered but not timed here (no task file): {len(results['unscored'])}")
    print(f"results: {path}")
    return 0


def print_table(results: dict) -> None:
    """The paper's layout, in plain text."""
    categories = results["categories"]
    labels = ["STEM" if c == "stem" else c.capitalize() for c in categories]
    print(" | ".join(["system", *labels, "avg", "median latency", "p90", "before end", "s/question"]))

    def fmt(value, digits=2, unit=""):
        return "-" if value is None else f"{value:.{digits}f}{unit}"

    for name, s in results["systems"].items():
        lat = s["latency"]
        before = "-" if lat["before_user_end"] is None else f"{100 * lat['before_user_end']:.0f}%"
        cells = [fmt(s["score"].get(c)) for c in categories]
        print(
            " | ".join(
                [
                    name,
                    *cells,
                    fmt(s["score"]["average"]),
                    fmt(lat["median"], 2, " s"),
                    fmt(lat["p90"], 2, " s"),
                    before,
                    fmt(s["wall_s_per_question"], 1, " s"),
                ]
            )
        )
