"""``kame demo``: the whole system (KAME or the cascade), end to end, on a question spoken by the offline TTS.

It speaks a question (Piper by default), runs one simulated session (streaming STT, the LLM's oracles,
the front-end speaking over them) and prints what happened when: the transcript as it grew, each
oracle, the assistant's words and the latencies. Files: the question, the reply, both as a stereo
conversation, and the session's timeline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kame.audio.tts import DEFAULT_TTS
from kame.cli.flags import (
    add_backend_arguments,
    add_cascade_arguments,
    add_frontend_arguments,
    add_pipeline_argument,
)

DEFAULT_QUESTION = "Hi! Could you tell me what the capital of France is?"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="speak a question and run the tandem system on it, end to end")
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument("--tts", default=DEFAULT_TTS, help="piper | piper:VOICE.onnx | espeak[:VOICE]")
    parser.add_argument("--out", default="kame-demo", help="folder for the WAV files and the timeline")
    parser.add_argument("--realtime", action="store_true", help="pace the session by the wall clock")
    parser.add_argument("--max-reply", type=float, default=10.0)
    add_pipeline_argument(parser)
    add_frontend_arguments(parser)
    add_backend_arguments(parser)
    add_cascade_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from kame.audio.io import resample, write_wav
    from kame.audio.tts import create_tts
    from kame.cli.simulate import run_simulation, write_outputs
    from kame.frames import SAMPLE_RATE

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    speech = create_tts(args.tts).synthesize(args.question)
    question = resample(speech.audio, speech.sample_rate, SAMPLE_RATE)
    write_wav(out / "question.wav", question)
    print(f"question ({speech.duration:.2f} s, {args.tts}): {args.question}")
    result = run_simulation(args, question, str(out / "timeline.jsonl"))
    write_outputs(result, str(out / "reply.wav"), str(out / "conversation.wav"))
    speaker = "KAME" if args.pipeline == "kame" else "the cascade"
    _narrate(result.events, speaker)
    print(
        f"\nfiles: {out}/question.wav, reply.wav, conversation.wav (left: user, right: {speaker}), "
        "timeline.jsonl"
    )
    return 0


def _narrate(events: list[dict], speaker: str = "KAME") -> None:
    from kame.eval.latency import summarize_timeline
    from kame.events import (
        AssistantWord,
        BargeIn,
        Error,
        Final,
        LLMDone,
        LLMRequest,
        Partial,
        ReplyEnd,
        ReplyStart,
        TurnEnd,
        is_a,
    )

    print("\nwhat happened (session time, s):")
    for event in events:
        kind, t = event["type"], event["t"]
        if is_a(event, Partial, Final):
            print(f"  {t:6.2f}  STT {kind:7}  {event.get('text', '')}")
        elif is_a(event, LLMRequest):
            print(f"  {t:6.2f}  LLM asked     ({event.get('reason', '')}) {event.get('text', '')!r}")
        elif is_a(event, LLMDone):
            print(f"  {t:6.2f}  oracle        {event.get('text', '')}")
        elif is_a(event, Error):
            print(f"  {t:6.2f}  error         {event.get('text', '')}")
        elif is_a(event, TurnEnd):
            print(
                f"  {t:6.2f}  turn end      ({event.get('reason')}, user stopped at {event.get('user_end')})"
            )
        elif is_a(event, ReplyStart):
            print(f"  {t:6.2f}  reply starts  (latency {event.get('latency')} s)")
        elif is_a(event, BargeIn, ReplyEnd):
            print(f"  {t:6.2f}  {kind:13} {event.get('reason', '')} {event.get('text') or ''}")
    words = [e for e in events if is_a(e, AssistantWord)]
    if words:
        said = " ".join(w.get("text", "") for w in words)[:300]
        print(f"  {words[0]['t']:6.2f}  {speaker} speaks: {said}")
    print("\nsummary:")
    for key, value in summarize_timeline(events).items():
        if key != "assistant_text":
            print(f"  {key}: {value}")
