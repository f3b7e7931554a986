"""``kame oracle``: stream a recording through the back-end (STT + LLM) and watch the oracles evolve.

The recording is cut into 80 ms frames and pushed either at real-time pace (``--realtime``, what a
live session sees) or as fast as the recognizer takes it (``--fast``). Transcripts and oracle events
are printed as they happen and every event is written to the ``--timeline`` JSON Lines file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any, TextIO

from kame.cli.flags import add_engine_arguments, add_oracle_policy_argument, add_system_prompt_argument
from kame.events import (
    Error,
    Final,
    LLMRequest,
    OracleAppend,
    OracleCancel,
    OracleEnd,
    OracleReset,
    Partial,
    SessionEnd,
    SessionStart,
)
from kame.frames import FRAME_S
from kame.timeline import Event

STT_RATE = 16000  # what the recording is decoded to (every STT engine resamples from here)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "oracle",
        help="stream a recording through the back-end and print transcripts and oracles",
        description="Stream a recording through streaming STT and an LLM; print transcripts and oracles.",
    )
    parser.add_argument("input", help="a WAV (or any file libsndfile reads), any rate and channel count")
    add_engine_arguments(parser)
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--realtime", dest="realtime", action="store_true", default=True, help="real-time pacing"
    )
    pace.add_argument(
        "--fast", dest="realtime", action="store_false", help="push audio as fast as it is decoded"
    )
    parser.add_argument("--timeline", required=True, help="where to write the events (JSON Lines)")
    add_oracle_policy_argument(parser, old_name=True)
    parser.add_argument(
        "--poll",
        type=float,
        default=None,
        help="decide every POLL seconds (released: 0.5) instead of per transcript",
    )
    parser.add_argument(
        "--first-token-grace",
        type=float,
        default=2.0,
        help="seconds an answer waiting for its first token is safe from new words (0: the released policy)",
    )
    add_system_prompt_argument(parser)
    parser.add_argument("--prompt-format", choices=("chat", "transcript"), default="chat")
    parser.add_argument("--max-words", type=int, default=40, help="cut answers after this many words")
    parser.add_argument(
        "--no-echo",
        dest="echo",
        action="store_false",
        help="do not count the answer to each finished utterance as said by the assistant (by default it is, "
        "as the front-end would speak it, so that a later question starts a new turn)",
    )
    parser.add_argument(
        "--tail", type=float, default=1.0, help="seconds of silence appended to the recording"
    )
    parser.add_argument(
        "--wait", type=float, default=15.0, help="seconds to wait for the last answer to finish"
    )
    parser.add_argument("--session", default="oracle", help="session name written on every event")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(run_oracle(args))


async def run_oracle(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    import numpy as np

    from kame.audio.io import load_audio
    from kame.backend.llm import create_llm
    from kame.backend.oracle_engine import OracleConfig, OraclePolicy
    from kame.backend.stt import create_stt
    from kame.runtime.backend import Backend
    from kame.timeline import Timeline

    audio = load_audio(args.input, STT_RATE)
    audio = np.concatenate([audio, np.zeros(int(max(0.0, args.tail) * STT_RATE), np.float32)])
    config = OracleConfig(
        policy=OraclePolicy(
            mode=args.oracle_policy, poll_interval_s=args.poll, first_token_grace_s=args.first_token_grace
        ),
        system_prompt_file=args.system_prompt,
        prompt_format=args.prompt_format,
        max_words=args.max_words,
    )
    backend = Backend(create_stt(args.stt), create_llm(args.llm), config)
    print(f"loading {args.stt} and {args.llm} ...", file=out, flush=True)
    warm_up_error = await backend.load()
    if warm_up_error is not None:
        print(f"warning: the LLM failed its warm-up request ({warm_up_error}); going on", file=out)
    timeline = Timeline(args.session, path=args.timeline)
    printer = _Printer(out, quiet=args.quiet)
    timeline.subscribe(printer, *_Printer.TYPES)
    timeline.emit(
        SessionStart(
            details={
                "input": str(args.input), "stt": args.stt, "llm": args.llm, "mode": args.oracle_policy,
                "realtime": args.realtime, "duration": round(audio.size / STT_RATE, 3),
            }
        )
    )  # fmt: skip
    session = backend.open_session(args.session, timeline, None)
    engine, stream = session.engine, session.stream
    if args.echo:
        timeline.subscribe(_Echo(engine), *_Echo.TYPES)
    await session.start()
    frame = int(FRAME_S * STT_RATE)
    started = time.perf_counter()
    try:
        for index, offset in enumerate(range(0, audio.size, frame)):
            chunk = audio[offset : offset + frame]
            if args.realtime:
                delay = started + index * FRAME_S - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            stream.push(chunk, STT_RATE)
            timeline.add_audio(chunk.size / STT_RATE)
            if not args.realtime:
                await stream.wait_processed()
        stream.finish()
        if session.feeder is not None:
            await session.feeder
        if not await engine.wait_idle(args.wait):
            print(f"(an answer was still streaming after {args.wait:.0f} s; cancelled)", file=out)
    finally:
        await session.aclose()
        await backend.aclose()
    stats = stream.stats
    timeline.emit(
        SessionEnd(
            details={
                "stt_rtf": round(stats.rtf, 4),
                "stt_decodes": stats.decodes,
                "stt_audio_s": round(stats.audio_s, 3),
                **{f"oracle_{k}": v for k, v in vars(engine.stats).items()},
            }
        )
    )
    timeline.close()
    _summary(out, printer, stats, engine, args)
    return 0


class _Echo:
    """Counts the answer to each finished utterance as said by the assistant, as the front-end would."""

    TYPES = (LLMRequest, OracleEnd, OracleCancel)

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.final_streams: set[int] = set()

    def __call__(self, event: Event) -> None:
        if event["type"] == LLMRequest.TYPE and event.get("reason") == "final":
            self.final_streams.add(event["stream"])
        elif (
            event["type"] in (OracleEnd.TYPE, OracleCancel.TYPE) and event.get("stream") in self.final_streams
        ):
            self.final_streams.discard(event["stream"])  # what it had said of the answer, even if cut
            if event.get("text"):
                self.engine.add_assistant_text(event["text"])


class _Printer:
    """Prints the events a person wants to watch, one line each, as they are recorded."""

    TYPES = (Partial, Final, LLMRequest, OracleReset, OracleAppend, OracleEnd, OracleCancel, Error)

    def __init__(self, out: TextIO, quiet: bool = False) -> None:
        self.out = out
        self.quiet = quiet
        self.finals: list[str] = []
        self.answers: dict[int, str] = {}

    def __call__(self, event: Event) -> None:
        kind, text, t = event["type"], event.get("text") or "", event["t"]
        stream = event.get("stream")
        line: str | None = None
        if kind == Partial.TYPE:
            line = f"user   ~ {text}"
        elif kind == Final.TYPE:
            self.finals.append(text)
            line = f"user   = {text}"
        elif kind == LLMRequest.TYPE:
            line = f"ask #{stream} ({event.get('reason')}, {event.get('user_words')} words)"
        elif kind == OracleReset.TYPE:
            self.answers[stream] = text
            line = f"oracle #{stream} > {text}"
        elif kind == OracleAppend.TYPE:
            self.answers[stream] = self.answers.get(stream, "") + text
            return
        elif kind == OracleEnd.TYPE:
            line = f"oracle #{stream} = {text}"
        elif kind == OracleCancel.TYPE:
            line = f"oracle #{stream} x {event.get('reason')}" + (f": {text}" if text else "")
        elif kind == Error.TYPE:
            line = f"ERROR  {text}"
        if line is not None and not self.quiet:
            print(f"{t:7.2f}s {event['audio_t']:6.2f}a  {line}", file=self.out, flush=True)


def _summary(out: TextIO, printer: _Printer, stats: Any, engine: Any, args: argparse.Namespace) -> None:
    print("", file=out)
    print(f"transcript: {' '.join(printer.finals) or '(nothing recognized)'}", file=out)
    print(f"last oracle: {engine.current_oracle or '(none)'}", file=out)
    s = engine.stats
    print(
        f"stt: {stats.decodes} decodes, real-time factor {stats.rtf:.2f}; llm: {s.requests} requests, "
        f"{s.adopted} adopted, {s.cancelled} cancelled, {s.completed} completed, {s.errors} errors",
        file=out,
    )
    if engine.last_error:
        print(f"last error: {engine.last_error}", file=out)
    print(f"timeline: {args.timeline}", file=out)
