"""Voice-to-voice latency of the cascade over spoken questions, beside KAME's onset on the same questions.

Each question (``tests/backend`` questions, spoken by Piper) runs as one simulated session on the
virtual clock of ``kame simulate``, which charges the back-end its real wall time on this machine and
skips only idle time: so these are the latencies of this CPU, as loaded as it is.

Cascade (embedded stack: Whisper tiny.en + Silero VAD, SmolLM2 ``local``, Piper): the response latency
is the first reply audio played minus the user's speech end as the VAD heard it (its stop minus the
confirmation silence, Pipecat's rule), split into stages that add up to it (``eou``: end of utterance,
the turn-end silence plus the final's decode; ``llm_request``; ``llm_ttft``; ``first_chunk``: first token to
the first speakable chunk; ``tts_ttfb``: the chunk's synthesis; ``playout``: to the next 80 ms tick). The
same latency is also measured from the true end of speech (the question's TTS word times) as a check.

KAME (the same back-end, the front-end named by ``--frontend``; the default is a tiny random
checkpoint, the only one a CPU runs in real time, whose words are babble): its first word after the
user's true end, how many words it said before that end, and when the oracle for the complete question
started (the first LLM token of a request that had heard the whole question) relative to the end.

    flock /tmp/kame-bench.lock .venv/bin/python bench/cascade_latency.py [--questions 12] [--json out]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NO_TORCH_COMPILE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "backend"))  # the speech helper shared with the tests

from backend_speech import QUESTIONS, synthesize  # noqa: E402

from kame.audio.io import resample  # noqa: E402
from kame.events import (  # noqa: E402
    AssistantWord,
    LLMDone,
    LLMFirstToken,
    ReplyStart,
    TurnEnd,
    is_a,
)

STAGES = ReplyStart.STAGES

LEAD_S = 0.5


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), 3) if values else None


def distribution(values: list[float]) -> dict[str, Any]:
    return {"median": pct(values, 50), "p90": pct(values, 90), "min": pct(values, 0), "max": pct(values, 100)}


def spoken_questions(count: int) -> list[tuple[str, np.ndarray, float]]:
    """(text, 24 kHz audio after ``LEAD_S`` of silence, second the last word ends) per question."""
    out = []
    for text in (QUESTIONS * 2)[:count]:
        utterance = synthesize(text, "piper")
        audio = resample(utterance.audio, utterance.sample_rate, 24000)
        lead = np.zeros(int(LEAD_S * 24000), np.float32)
        out.append((text, np.concatenate([lead, audio]), LEAD_S + utterance.words[-1].end))
    return out


async def run_cascade(questions, stt, llm, tts, turn_silence: float) -> list[dict[str, Any]]:
    from kame.runtime.cascade.pipeline import Cascade, CascadeConfig
    from kame.runtime.simulate import simulate_cascade

    cascade = Cascade(stt, llm, tts, CascadeConfig(turn_silence_s=turn_silence))
    await cascade.load()
    rows = []
    for index, (text, audio, spoken_end) in enumerate(questions):
        result = await simulate_cascade(cascade, audio, session_id=f"cascade-{index}")
        starts = [e for e in result.events if is_a(e, ReplyStart)]
        turns = [e for e in result.events if is_a(e, TurnEnd)]
        done = [e for e in result.events if is_a(e, LLMDone)]
        row: dict[str, Any] = {"question": text, "turns": len(turns), "replied": bool(starts)}
        if starts:
            start = starts[0]
            row.update({name: start[name] for name in STAGES})
            row["latency"] = start["latency"]
            row["latency_from_true_end"] = round(start["t"] - spoken_end, 4)
            row["user_end_error"] = round(turns[0]["user_end"] - spoken_end, 4)
            row["answer"] = done[0]["text"] if done else ""
        rows.append(row)
        print(f"  cascade {index + 1:2}/{len(questions)}: {row.get('latency')} s  {row.get('answer', '')!r}")
    return rows


async def run_kame(questions, frontend_path: str, stt, llm) -> list[dict[str, Any]]:
    import torch

    from kame.frontend.checkpoint import load_frontend
    from kame.frontend.engine import FrontendEngine
    from kame.runtime.backend import Backend
    from kame.runtime.simulate import simulate

    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    frontend = load_frontend(frontend_path, device="cpu")
    backend = Backend(stt, llm)
    rows = []
    for index, (text, audio, spoken_end) in enumerate(questions):
        with FrontendEngine(frontend, 1) as engine:
            result = await simulate(engine, backend, audio, session_id=f"kame-{index}")
        words = [e for e in result.events if is_a(e, AssistantWord)]
        after = [e["t"] for e in words if e["t"] >= spoken_end]
        covered = [
            e["t"] for e in result.events
            if is_a(e, LLMFirstToken) and float(e.get("covered", 0)) >= spoken_end - 0.05
        ]  # fmt: skip
        rows.append({
            "question": text,
            "first_word_after_end": round(after[0] - spoken_end, 4) if after else None,
            "words_before_end": sum(1 for e in words if e["t"] < spoken_end),
            "full_question_oracle": round(covered[0] - spoken_end, 4) if covered else None,
        })  # fmt: skip
        first = rows[-1]["first_word_after_end"]
        print(f"  kame    {index + 1:2}/{len(questions)}: first word after end {first} s")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=12, help="how many spoken questions (>= 10)")
    parser.add_argument("--frontend", default=None, help="KAME checkpoint (default: a tiny random one)")
    parser.add_argument("--turn-silence", type=float, default=0.6)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()

    from kame.audio.tts import create_tts
    from kame.backend.llm import create_llm
    from kame.backend.stt import create_stt

    started = time.perf_counter()
    print(f"speaking {args.questions} questions with Piper...")
    questions = spoken_questions(args.questions)
    stt, llm, tts = create_stt("whisper"), create_llm("local"), create_tts("piper")
    print("cascade (Whisper tiny.en + Silero VAD, SmolLM2 local, Piper), virtual clock:")
    cascade = asyncio.run(run_cascade(questions, stt, llm, tts, args.turn_silence))
    frontend = args.frontend
    if frontend is None:
        from kame.frontend.checkpoint import init_checkpoint

        frontend = str(Path(tempfile.mkdtemp(prefix="kame-bench-")) / "tiny")
        init_checkpoint(frontend, preset="tiny", seed=0)
    print(f"KAME (front-end {args.frontend or 'tiny random'}, the same back-end), virtual clock:")
    kame = asyncio.run(run_kame(questions, frontend, stt, llm))

    replied = [r for r in cascade if r["replied"]]
    figures = {
        "machine": f"{os.cpu_count()}-core CPU, shared with other jobs (figures include their load)",
        "questions": len(questions),
        "cascade": {
            "replied": len(replied),
            "latency_s": distribution([r["latency"] for r in replied]),
            "latency_from_true_end_s": distribution([r["latency_from_true_end"] for r in replied]),
            "user_end_error_s": distribution([r["user_end_error"] for r in replied]),
            "stages_s": {name: distribution([r[name] for r in replied]) for name in STAGES},
        },
        "kame": {
            "first_word_after_end_s": distribution(
                [r["first_word_after_end"] for r in kame if r["first_word_after_end"] is not None]
            ),
            "words_before_end": distribution([float(r["words_before_end"]) for r in kame]),
            "full_question_oracle_s": distribution(
                [r["full_question_oracle"] for r in kame if r["full_question_oracle"] is not None]
            ),
        },
        "rows": {"cascade": cascade, "kame": kame},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    c, k = figures["cascade"], figures["kame"]
    print(f"\nvoice-to-voice latency over {len(replied)}/{len(questions)} questions ({figures['machine']}):")
    print(f"  cascade response latency   median {c['latency_s']['median']} s, p90 {c['latency_s']['p90']} s")
    print(f"  ... from the true end      median {c['latency_from_true_end_s']['median']} s, "
          f"p90 {c['latency_from_true_end_s']['p90']} s")  # fmt: skip
    for name in STAGES:
        stage = c["stages_s"][name]
        print(f"    {name:12} median {stage['median']} s, p90 {stage['p90']} s")
    print(f"  KAME first word after end  median {k['first_word_after_end_s']['median']} s, "
          f"p90 {k['first_word_after_end_s']['p90']} s; words before the end: median "
          f"{k['words_before_end']['median']}")  # fmt: skip
    print(f"  KAME full-question oracle  median {k['full_question_oracle_s']['median']} s, "
          f"p90 {k['full_question_oracle_s']['p90']} s after the end")  # fmt: skip
    print(f"wall time {figures['wall_s']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
