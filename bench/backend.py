"""Back-end benchmark on the embedded stack: STT accuracy and speed, LLM latency, word-to-oracle lag.

Speech is made on the spot (Piper's joe voice and espeak-ng, questions from ``tests/backend``), so the
figures need nothing downloaded. Four parts, each printed with the targets of issue 3:

1. STT accuracy and cadence: every engine on every question, pushed as fast as it decodes (one
   session): WER, the gap between partials in seconds of speech, real-time factor.
2. The cost of Whisper re-reading the utterance: one decode of clips of growing length, with this
   engine's bounded encoder window against faster-whisper's standard 30 s window.
3. The LLM alone: time to first token and tokens per second on the final transcripts.
4. Everything together in real time (one session: Whisper and the LLM sharing the CPU): partial
   cadence, STT real-time factor, LLM time to first token, and the lag from each word being spoken
   (its end in the recording, from the TTS word times) to the first oracle token whose request had
   heard it (``covered`` >= the word's end).

    flock /tmp/kame-bench.lock .venv/bin/python bench/backend.py [--questions 12] [--timeline out.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "backend"))  # the speech helper shared with the tests

from backend_speech import QUESTIONS, conversation, synthesize, transcribe  # noqa: E402

from kame.backend.stt import STTError, create_stt  # noqa: E402
from kame.backend.stt.wer import corpus_wer  # noqa: E402
from kame.events import (  # noqa: E402
    AudioReceived,
    Final,
    LLMFirstToken,
    LLMRequest,
    OracleCancel,
    OracleEnd,
    OracleReset,
    Partial,
    is_a,
)

TARGETS = {
    "partial_gap_s": 0.5,
    "whisper_wer_piper": 0.15,
    "stt_rtf": 0.5,
    "llm_ttft_median_s": 0.3,
    "lag_median_s": 1.0,
    "lag_p90_s": 2.0,
}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def verdict(value: float, target: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if value <= target:
        return f"ok (target <= {target:g})"
    return f"MISSED by {value - target:.3g} ({value / target:.2f}x the target {target:g})"


# -- 1. STT accuracy and cadence ---------------------------------------------------------------------
def bench_stt(engine_name: str, voices: dict[str, list[Any]]) -> dict[str, Any]:
    try:
        engine = create_stt(engine_name)
        engine.load_blocking()
    except STTError as exc:
        return {"engine": engine_name, "skipped": str(exc)}
    result: dict[str, Any] = {"engine": engine_name}
    for voice, utterances in voices.items():
        pairs, gaps, compute, audio_s = [], [], 0.0, 0.0
        for utterance in utterances:
            lead = 0.5
            audio = np.concatenate(
                [np.zeros(int(lead * utterance.sample_rate), np.float32), utterance.audio,
                 np.zeros(int(1.0 * utterance.sample_rate), np.float32)]
            )  # fmt: skip
            transcripts, stream, _ = asyncio.run(transcribe(engine, audio, utterance.sample_rate))
            finals = [t.text for t in transcripts if t.kind == "final"]
            pairs.append((utterance.text, " ".join(finals)))
            speech_end = lead + utterance.duration
            times = [t.audio_t for t in transcripts if t.kind == "partial" and t.audio_t <= speech_end]
            gaps += list(np.diff(times))
            compute += stream.stats.compute_s
            audio_s += stream.stats.audio_s
        result[voice] = {
            "wer": round(corpus_wer(pairs), 4),
            "partial_gap_median_s": round(pct(gaps, 50), 3),
            "partial_gap_p90_s": round(pct(gaps, 90), 3),
            "partial_gap_max_s": round(max(gaps) if gaps else float("nan"), 3),
            "rtf": round(compute / audio_s, 3),
            "errors": [p for p in pairs if corpus_wer([p]) > 0][:4],
        }
    engine.close_blocking()
    return result


# -- 2. Whisper re-reading cost ------------------------------------------------------------------------
def bench_rereading(utterance: Any) -> list[dict[str, float]]:
    from kame.audio.io import resample
    from kame.backend.stt.whisper import WhisperConfig, WhisperSTT

    bounded = WhisperSTT(WhisperConfig())
    full = WhisperSTT(WhisperConfig(min_window_s=30.0))
    bounded.load_blocking()
    full.load_blocking()
    audio = resample(utterance.audio, utterance.sample_rate, 16000)
    rows = []
    for seconds in (0.5, 1.0, 2.0, utterance.duration):
        clip = audio[: int(seconds * 16000)]
        row = {"clip_s": round(seconds, 2)}
        for name, engine in (("bounded_10s_window", bounded), ("standard_30s_window", full)):
            times = []
            for _ in range(3):
                times.append(engine.decode(clip).compute_s)
            row[name] = round(statistics.median(times), 4)
        rows.append(row)
    return rows


# -- 3. LLM alone ---------------------------------------------------------------------------------------
async def bench_llm(llm: Any, questions: list[str]) -> dict[str, Any]:
    from kame.backend.llm import ChatMessage
    from kame.backend.prompts import load_prompt

    system = ChatMessage("system", load_prompt())
    ttfts, rates = [], []
    await llm.complete([ChatMessage("user", "Hello")], max_tokens=1)  # load the model
    for question in questions:
        start = time.perf_counter()
        first, chunks = None, 0
        async for _ in llm.stream_chat([system, ChatMessage("user", question)], max_tokens=64):
            chunks += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        if first is not None:
            ttfts.append(first - start)
            if chunks > 1 and end > first:
                rates.append((chunks - 1) / (end - first))
    return {
        "ttft_median_s": round(pct(ttfts, 50), 4),
        "ttft_p90_s": round(pct(ttfts, 90), 4),
        "tokens_per_s": round(statistics.median(rates), 1) if rates else float("nan"),
    }


# -- 4. Everything together in real time -----------------------------------------------------------------
async def bench_live(llm: Any, texts: list[str], timeline_path: str | None) -> dict[str, Any]:
    from kame.backend.oracle_engine import OracleConfig, OracleEngine
    from kame.timeline import Timeline

    audio, rate, utterances, starts = conversation(texts, "piper", gap_s=2.0, tail_s=1.5)
    stt = create_stt("whisper")
    await stt.load()
    timeline = Timeline("bench", path=timeline_path)
    engine = OracleEngine(llm, None, config=OracleConfig(), timeline=timeline)
    # As the front-end would, say each finished utterance's answer, so that questions are separate turns.
    final_streams: set[int] = set()

    def echo(event: dict[str, Any]) -> None:
        if is_a(event, LLMRequest) and event.get("reason") == "final":
            final_streams.add(event["stream"])
        elif is_a(event, OracleEnd, OracleCancel) and event.get("stream") in final_streams:
            final_streams.discard(event["stream"])  # what it had said of the answer, even if cut
            if event.get("text"):
                engine.add_assistant_text(event["text"])

    timeline.subscribe(echo)
    stream = stt.open_stream("bench")
    await stream.start()
    await engine.start()
    pump = asyncio.create_task(engine.run(stream))
    frame_s, frame = 0.08, int(0.08 * rate)
    started = time.perf_counter()
    for index, offset in enumerate(range(0, audio.size, frame)):
        await asyncio.sleep(max(0.0, started + index * frame_s - time.perf_counter()))
        chunk = audio[offset : offset + frame]
        stream.push(chunk, rate)
        timeline.add_audio(chunk.size / rate)
    stream.finish()
    await pump
    await engine.wait_idle(20)
    await engine.aclose()
    await stream.aclose()
    timeline.close()
    events = timeline.events

    audio_events = [(e["audio_t"], e["t"]) for e in events if is_a(e, AudioReceived)]
    audio_ts = np.array([a for a, _ in audio_events])
    wall_ts = np.array([t for _, t in audio_events])

    def heard_at(audio_t: float) -> float:
        """Session time at which the audio up to ``audio_t`` had been received."""
        index = int(np.searchsorted(audio_ts, audio_t - 1e-9))
        return float(wall_ts[min(index, len(wall_ts) - 1)])

    resets = [(e["covered"], e["t"]) for e in events if is_a(e, OracleReset)]
    lags, missing = [], 0
    for utterance, start in zip(utterances, starts, strict=True):
        for word in utterance.words:
            end = start + word.end
            usable = [t for covered, t in resets if covered >= end]
            if not usable:
                missing += 1
                continue
            lags.append(min(usable) - heard_at(end))
    gaps = []
    for index, (utterance, start) in enumerate(zip(utterances, starts, strict=True)):
        speech_end = start + utterance.duration
        times = [
            e["covered"] for e in events
            if is_a(e, Partial) and e["utterance"] == index and e["covered"] <= speech_end
        ]  # fmt: skip
        gaps += list(np.diff(times))
    ttfts = [e["ttft"] for e in events if is_a(e, LLMFirstToken)]
    finals = [e["text"] for e in events if is_a(e, Final)]
    return {
        "audio_s": round(audio.size / rate, 2),
        "words": sum(len(u.words) for u in utterances),
        "lag_median_s": round(pct(lags, 50), 3),
        "lag_p90_s": round(pct(lags, 90), 3),
        "words_without_oracle": missing,
        "partial_gap_median_s": round(pct(gaps, 50), 3),
        "partial_gap_p90_s": round(pct(gaps, 90), 3),
        "stt_rtf": round(stream.stats.rtf, 3),
        "llm_ttft_median_s": round(pct(ttfts, 50), 4),
        "llm_ttft_p90_s": round(pct(ttfts, 90), 4),
        "llm_requests": engine.stats.requests,
        "llm_cancelled": engine.stats.cancelled,
        "wer": round(corpus_wer(zip(texts, finals, strict=False)), 4) if len(finals) == len(texts) else None,
        "finals": finals,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=12, help="spoken questions per voice (max 12)")
    parser.add_argument("--live-questions", type=int, default=6, help="questions in the real-time run")
    parser.add_argument("--stt", nargs="+", default=["whisper", "pocketsphinx", "kyutai"])
    parser.add_argument("--llm", default="local")
    parser.add_argument("--timeline", default=None, help="write the real-time run's timeline here")
    parser.add_argument("--json", default=None, help="write all figures here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from kame.backend.llm import create_llm

    texts = QUESTIONS[: args.questions]
    print(f"synthesizing {len(texts)} questions with Piper and espeak-ng ...", flush=True)
    voices = {voice: [synthesize(text, voice) for text in texts] for voice in ("piper", "espeak")}
    report: dict[str, Any] = {"stt": [], "machine": f"{os.cpu_count()} CPUs", "load_before": os.getloadavg()}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (other work here skews timings)")

    print("\n== 1. STT, one session, audio pushed as fast as it is decoded")
    for name in args.stt:
        result = bench_stt(name, voices)
        report["stt"].append(result)
        if "skipped" in result:
            print(f"{name:13s} not run: {result['skipped']}")
            continue
        for voice in voices:
            r = result[voice]
            print(
                f"{name:13s} {voice:7s} WER {r['wer']:6.1%}  partial gap median "
                f"{r['partial_gap_median_s']:.2f} s p90 {r['partial_gap_p90_s']:.2f} s "
                f"max {r['partial_gap_max_s']:.2f} s  RTF {r['rtf']:.2f}"
            )

    print(
        "\n== 2. Whisper re-reading the utterance: seconds per decode (features, encoder, decoder, alignment)"
    )
    rows = bench_rereading(voices["piper"][1])
    report["rereading"] = rows
    for row in rows:
        print(
            f"clip {row['clip_s']:5.2f} s: bounded window {row['bounded_10s_window']:.3f} s, "
            f"standard 30 s window {row['standard_30s_window']:.3f} s "
            f"({row['standard_30s_window'] / row['bounded_10s_window']:.1f}x)"
        )

    llm = create_llm(args.llm)
    print(f"\n== 3. LLM alone ({args.llm})")
    report["llm"] = asyncio.run(bench_llm(llm, texts))
    r = report["llm"]
    print(
        f"time to first token median {r['ttft_median_s']:.3f} s, p90 {r['ttft_p90_s']:.3f} s; "
        f"{r['tokens_per_s']} tok/s"
    )

    print(f"\n== 4. Real time, Whisper + oracle engine + {args.llm}, {args.live_questions} questions")
    live = asyncio.run(bench_live(llm, texts[: args.live_questions], args.timeline))
    report["live"] = live
    print(f"{live['audio_s']} s of audio, {live['words']} words, WER {live['wer']}")
    print(f"partial gap median {live['partial_gap_median_s']:.2f} s, p90 {live['partial_gap_p90_s']:.2f} s")
    print(f"STT real-time factor {live['stt_rtf']:.2f} (sharing the CPU with the LLM)")
    print(
        f"LLM time to first token median {live['llm_ttft_median_s']:.3f} s, "
        f"p90 {live['llm_ttft_p90_s']:.3f} s "
        f"({live['llm_requests']} requests, {live['llm_cancelled']} cancelled)"
    )
    print(
        f"word-to-oracle lag median {live['lag_median_s']:.2f} s, p90 {live['lag_p90_s']:.2f} s "
        f"({live['words_without_oracle']} words never reached an oracle)"
    )

    whisper = next((s for s in report["stt"] if s["engine"] == "whisper" and "piper" in s), None)
    print("\n== Targets")
    checks = [
        ("partials every <= 0.5 s of speech (live, median)", live["partial_gap_median_s"], "partial_gap_s"),
        (
            "Whisper WER on Piper speech",
            whisper["piper"]["wer"] if whisper else float("nan"),
            "whisper_wer_piper",
        ),
        ("STT real-time factor (live)", live["stt_rtf"], "stt_rtf"),
        ("LLM time to first token, median (live)", live["llm_ttft_median_s"], "llm_ttft_median_s"),
        ("word-to-oracle lag, median", live["lag_median_s"], "lag_median_s"),
        ("word-to-oracle lag, p90", live["lag_p90_s"], "lag_p90_s"),
    ]
    for label, value, key in checks:
        print(f"{label:48s} {value:8.3f}  {verdict(value, TARGETS[key])}")
    report["load_after"] = os.getloadavg()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
