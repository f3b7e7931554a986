"""Does the shipped ``--frontend tiny`` say what the embedded back-end's LLM says?

For each question (spoken by the offline TTS), runs ``kame simulate --frontend tiny --llm local`` (the
whole tandem system: Whisper STT, SmolLM2 oracles, the front-end) and scores the session's timeline:
of the first ten words of the last oracle that reached the front-end, the fraction that the assistant
says after that oracle's first token was applied (target: >= 80 % on average)::

    python bench/default_following.py [--tts espeak] [--frontend tiny] [--json FILE] [--timelines DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

QUESTIONS = (
    "Hi! Could you tell me what the capital of France is?",
    "What is the biggest animal in the ocean?",
    "Why is the sky blue?",
    "How many legs does a spider have?",
    "What do bees make?",
    "Can you tell me something about the moon?",
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frontend", default="tiny")
    parser.add_argument("--tts", default="espeak")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temp-text", type=float, help="text temperature (default: the checkpoint's)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--timelines", type=Path, help="keep each session's timeline in this folder")
    args = parser.parse_args()
    from kame.audio.io import resample, write_wav
    from kame.audio.tts import create_tts
    from kame.eval.following import last_oracle_following
    from kame.frames import SAMPLE_RATE

    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_TORCH_COMPILE": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        tts = create_tts(args.tts)
        for index, question in enumerate(QUESTIONS):
            speech = tts.synthesize(question)
            wav = Path(scratch) / f"q{index}.wav"
            write_wav(wav, resample(speech.audio, speech.sample_rate, SAMPLE_RATE))
            timeline = Path(scratch) / f"t{index}.jsonl"
            subprocess.run(
                [sys.executable, "-m", "kame", "simulate", str(wav), "--frontend", args.frontend,
                 "--llm", "local", "--output", str(Path(scratch) / f"a{index}.wav"), "--timeline",
                 str(timeline), "--seed", str(args.seed + index), "--max-reply", "8",
                 *(["--temp-text", str(args.temp_text)] if args.temp_text is not None else [])],
                check=True, env=env, capture_output=True,
            )  # fmt: skip
            events = [json.loads(line) for line in timeline.read_text().splitlines()]
            if args.timelines is not None:
                args.timelines.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(timeline, args.timelines / f"q{index}-seed{args.seed + index}.jsonl")
            row = {"question": question, **last_oracle_following(events)}
            rows.append(row)
            print(f"{100 * row['fraction']:5.0f} %  Q: {question}\n        oracle: {row['oracle']}")
            print(f"        said:   {row['said']}")
    mean = sum(float(r["fraction"]) for r in rows) / len(rows)
    print(f"\nmean over {len(rows)} questions: {100 * mean:.1f} % of the last oracle's first ten words said")
    if args.json:
        args.json.write_text(json.dumps({"mean": mean, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
