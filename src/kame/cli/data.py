"""``kame data``: build spoken, oracle-annotated training dialogues, and look inside a built dataset."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

from kame.audio.tts.registry import DEFAULT_TTS
from kame.backend.llm.registry import DEFAULT_LLM
from kame.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="build or inspect Simulated Oracle Augmentation datasets")
    actions = parser.add_subparsers(dest="action", required=True)

    build = actions.add_parser("build", help="turn a Q&A source into spoken dialogues with simulated oracles")
    build.add_argument(
        "--source",
        required=True,
        help="jsonl:PATH, parquet:PATH, hf:OWNER/NAME[:CONFIG][@SPLIT], "
        "gsm8k, mmlu-pro or hssbench:OWNER/NAME",
    )
    build.add_argument("--out", required=True, help="dataset folder (created; an existing one is resumed)")
    build.add_argument(
        "--llm", default=DEFAULT_LLM, help=f"simulator and rewriter LLM spec (default: {DEFAULT_LLM})"
    )
    build.add_argument(
        "--tts", default=DEFAULT_TTS, help="TTS spec: piper, piper:VOICE.onnx, espeak[:VOICE], kyutai"
    )
    build.add_argument("--assistant-tts", help="another TTS spec for the assistant's voice (default: --tts)")
    build.add_argument("--columns", help="column mapping, e.g. question=problem,answer=solution")
    build.add_argument("--limit", type=int, help="use only the first N records of the source")
    build.add_argument(
        "--shard", default="0/1", help="I/N: build the records whose index %% N == I (default 0/1)"
    )
    build.add_argument("--workers", type=int, default=2, help="dialogues in flight at once (default 2)")
    build.add_argument("--llm-concurrency", type=int, default=4, help="LLM calls at once (default 4)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--no-rewrite", action="store_true", help="speak the written text as it is (cleaned)")
    build.add_argument(
        "--oracles",
        choices=("simulated", "verbatim"),
        default="simulated",
        help="simulated: levels 0-5 written by the simulator LLM (default); verbatim: only the level-5 "
        "oracle (the ground-truth reply once the user's utterance is heard), no simulator calls. "
        "With --no-rewrite, verbatim loads no LLM at all: a fast build at TTS speed",
    )
    build.add_argument("--prompts", help="folder of prompt files overriding the defaults by name")
    build.add_argument("--temperature", type=float, default=0.7)
    build.add_argument(
        "--interval", type=float, default=0.5, help="seconds between oracle events (default 0.5)"
    )
    build.add_argument(
        "--response-gap",
        default="0.2,0.7",
        help="LOW,HIGH: seconds of silence from the user's last word to the assistant's first, drawn "
        "uniformly (default 0.2,0.7)",
    )
    build.add_argument("--per-shard", type=int, default=256, help="records per tar shard (default 256)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=_build)

    inspect = actions.add_parser("inspect", help="print a dataset's stats and one record's timeline")
    inspect.add_argument("folder")
    inspect.add_argument("--json", action="store_true", help="every record as one JSON object per line")
    inspect.add_argument("--record", help="the record whose timeline to print (default: the first)")
    inspect.set_defaults(func=_inspect)

    encode = actions.add_parser(
        "encode", help="cache a dataset's Mimi codes for a front-end (training fills what is missing)"
    )
    encode.add_argument("folder", nargs="+", help="dataset folder(s)")
    encode.add_argument("--frontend", required=True, help="checkpoint folder, hf://owner/name, or tiny")
    encode.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    encode.set_defaults(func=_encode)


def _parse_shard(text: str) -> tuple[int, int]:
    part, slash, parts = text.partition("/")
    if not slash or not part.isdigit() or not parts.isdigit() or int(part) >= int(parts):
        raise UserError(f"--shard {text!r}: write I/N with 0 <= I < N, e.g. 0/4")
    return int(part), int(parts)


def _build(args: argparse.Namespace) -> int:
    from kame.data.build import BuildConfig, BuildError, build
    from kame.data.oracles import ScheduleConfig
    from kame.data.prompts import PromptError
    from kame.data.sources import SourceError
    from kame.data.speech import VoiceConfig

    part, parts = _parse_shard(args.shard)
    gap = parse_range(args.response_gap, "--response-gap")
    try:
        config = BuildConfig(
            source=args.source,
            out=Path(args.out),
            llm=args.llm,
            tts=args.tts,
            assistant_tts=args.assistant_tts,
            columns=args.columns,
            limit=args.limit,
            part=part,
            parts=parts,
            workers=args.workers,
            llm_concurrency=args.llm_concurrency,
            seed=args.seed,
            rewrite=not args.no_rewrite,
            oracles=args.oracles,
            prompts=args.prompts,
            temperature=args.temperature,
            per_shard=args.per_shard,
            schedule=ScheduleConfig(interval=args.interval),
            voice=VoiceConfig(response_gap=gap),
        )
        summary = build(config, progress=not args.no_progress)
    except (BuildError, SourceError, PromptError) as exc:
        raise UserError(str(exc)) from exc
    print(json.dumps(summary, indent=2))
    return 0 if summary["written"] or summary["already_done"] else 1


def parse_range(text: str, flag: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"{flag} {text!r}: write LOW,HIGH in seconds, e.g. 0.2,0.7") from None
    if not 0 <= low <= high:
        raise UserError(f"{flag} {text!r}: need 0 <= LOW <= HIGH")
    return low, high


def _encode(args: argparse.Namespace) -> int:
    import torch

    from kame.data.dataset import CODES_FOLDER
    from kame.data.frames import FrameLoader
    from kame.frontend.checkpoint import CheckpointError, load_frontend
    from kame.train.data import DataError, check_frontend, encode_records

    torch.set_grad_enabled(False)
    try:
        frontend = load_frontend(args.frontend, device=args.device)
        check_frontend(frontend)
        loader = FrameLoader(frontend)
        for folder in args.folder:
            loader.cache = Path(folder) / CODES_FOLDER
            encoded, cached = encode_records(folder, loader)
            if not encoded + cached:
                raise UserError(f"{folder}: the dataset holds no complete records")
            where = f"{loader.cache}, Mimi {loader.fingerprint()}"
            print(f"{folder}: {encoded} encoded, {cached} already cached ({where})")
    except (CheckpointError, DataError) as exc:
        raise UserError(str(exc)) from exc
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from kame.data.dataset import DatasetError, read_records

    try:
        records = read_records(args.folder, audio=False)
        if args.json:
            try:
                for record in records:
                    print(json.dumps(record.meta, ensure_ascii=False), flush=True)
            except BrokenPipeError:  # the reader (e.g. head) stopped early
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
            return 0
        count, seconds, levels, chosen = 0, 0.0, Counter(), None
        for record in records:
            count += 1
            seconds += float(record.meta.get("duration", 0.0))
            levels.update(int(e["level"]) for e in record.meta.get("oracles", []))
            if chosen is None and (args.record is None or record.id == args.record):
                chosen = record.meta
    except DatasetError as exc:
        raise UserError(str(exc)) from exc
    try:
        _print_stats(args, count, seconds, levels, chosen)
    except BrokenPipeError:  # the reader (e.g. head) stopped early
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
    return 0


def _print_stats(args: argparse.Namespace, count: int, seconds: float, levels: Counter, chosen) -> None:  # type: ignore[no-untyped-def]
    failures = Path(args.folder) / "failures.jsonl"
    failed = sum(1 for _ in failures.open()) if failures.is_file() else 0
    print(f"{args.folder}: {count} dialogues, {seconds / 3600:.3f} h of audio, {failed} failures logged")
    print("oracle events per level: " + ", ".join(f"{k}: {levels[k]}" for k in sorted(levels)))
    if chosen is None:
        if args.record:
            raise UserError(f"no record {args.record!r} in {args.folder}")
        return
    _print_timeline(chosen)


def _print_timeline(meta: dict) -> None:
    out = sys.stdout
    out.write(f"\nrecord {meta['id']} ({meta['duration']:.2f} s)\n")
    rows = [(w["start"], "user", w["word"]) for w in meta["user_words"]]
    rows += [(w["start"], "assistant", w["word"]) for w in meta["assistant_words"]]
    rows += [
        (e["time"], f"oracle L{e['level']}", f"[frame {e['frame']}] {e['text']}") for e in meta["oracles"]
    ]
    for t, who, text in sorted(rows, key=lambda r: r[0]):
        out.write(f"{t:7.2f}  {who:<10} {text}\n")
