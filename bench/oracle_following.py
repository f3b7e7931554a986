"""The toy proof that a front-end trained with Simulated Oracle Augmentation follows its oracles.

Runs the project's own pipeline end to end on one CPU thread:

1. ``scripts/build_tiny_oracle_data.py`` (``kame data build --no-rewrite --oracles verbatim`` with
   espeak): spoken Q&A whose answers name key words that nothing in the question predicts, a training
   set (seed 0) and a disjoint held-out set (seed 1);
2. ``kame data encode`` caches their Mimi codes (timed apart: the tiny Mimi is fixed, so this is done
   once per dataset);
3. ``kame train --config configs/train/tiny.yaml`` (its ``init``, or ``--init``), timed (wall and CPU);
4. ``kame infer`` on each held-out question (the user's channel of the record, plus silence), once with
   the true answer injected as an oracle when the question has been heard (the record's level-5
   oracle time, plus ``--oracle-delay``), once with no oracle.

Prints the key-word recall of the text stream in both cases (targets: >= 90 % with the oracle,
<= 5 % without) and the training time (target: 2 minutes on one core)::

    python bench/oracle_following.py [--work DIR] [--json bench/results/oracle_following.json]

Rerunning reuses the built data and the finished training run of the same ``--work`` folder (both
commands resume); ``--retrain`` trains again from scratch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TAIL_S = 2.0  # silence after the user's channel, so a slow reply can finish


def kame(*args: str) -> None:
    """Run a ``kame`` command in a child process on one thread, failing loudly."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_TORCH_COMPILE": "1"}
    subprocess.run([sys.executable, "-m", "kame", *args], check=True, env=env)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build(out: Path, count: int, seed: int, response_gap: tuple[float, float] | None) -> None:
    """Build a toy set into ``out``, or reuse one built there with the same response gap."""
    from kame.data.speech import VoiceConfig

    settings = out / "dataset" / "build.json"  # kame data build's record of the settings it built with
    wanted = list(response_gap or VoiceConfig().response_gap)
    if settings.is_file() and (built := json.loads(settings.read_text())["voice"]["response_gap"]) != wanted:
        raise SystemExit(
            f"{out} was built with --response-gap {built[0]},{built[1]}, not {wanted[0]},{wanted[1]}: "
            "use another --work folder"
        )
    if (out / "dataset" / "summary.json").is_file() and (out / "source.jsonl").is_file():
        lines = (out / "source.jsonl").read_text().count("\n")
        if lines >= count:  # a bigger set built before: use its first ``count`` records
            return
    script = ROOT / "scripts" / "build_tiny_oracle_data.py"
    gap = ["--response-gap", f"{response_gap[0]},{response_gap[1]}"] if response_gap else []
    subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--count", str(count), "--seed", str(seed), *gap],
        check=True,
    )


def words_of(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def infer_text(wav: Path, frontend: str, script: Path | None, seed: int, greedy: bool) -> str:
    """``kame infer`` (the command's own entry point, in this process) and the text it printed."""
    from kame.cli import main

    argv = ["infer", str(wav), "--frontend", frontend, "--output", str(wav.with_suffix(".reply.wav"))]
    argv += ["--seed", str(seed)] + (["--greedy"] if greedy else [])
    if script is not None:
        argv += ["--oracle-script", str(script)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(argv)
    if code != 0:
        raise RuntimeError(f"kame infer failed ({code}): {printed.getvalue()}")
    for line in printed.getvalue().splitlines():
        if line.startswith("assistant text: "):
            return line.removeprefix("assistant text: ")
    return ""


def evaluate(
    held: Path, frontend: str, work: Path, count: int, delay: float, greedy: bool
) -> dict[str, object]:
    """Key-word recall with and without the oracle over the first ``count`` held-out records."""
    from kame.audio.io import write_wav
    from kame.data.dataset import read_records

    scratch = work / "infer"
    scratch.mkdir(parents=True, exist_ok=True)
    totals = {"with": 0, "without": 0}
    keys_total = 0
    examples, outcomes = [], []
    by_slot: dict[tuple[int, int], list[int]] = {}  # (N, K) -> [said, asked]: where in a list recall fails
    for index, record in enumerate(read_records(held / "dataset")):
        if index >= count:
            break
        meta = record.meta
        keywords = [k.lower() for k in meta["source"]["keywords"]]
        oracle = meta["oracles"][-1]
        wav = scratch / f"{record.id}.wav"
        audio = np.concatenate([record.user, np.zeros(int(TAIL_S * record.sample_rate), np.float32)])
        write_wav(wav, audio, record.sample_rate)
        script = scratch / f"{record.id}.oracle.jsonl"
        time_s = float(oracle["time"]) + delay
        script.write_text(
            json.dumps({"time": time_s, "op": "reset"})
            + "\n"
            + json.dumps({"time": time_s, "op": "append", "text": oracle["text"]})
            + "\n"
        )
        texts = {
            "with": infer_text(wav, frontend, script, index, greedy),
            "without": infer_text(wav, frontend, None, index, greedy),
        }
        said = {key: sorted(set(keywords) & words_of(text)) for key, text in texts.items()}
        for key in texts:
            totals[key] += len(said[key])
        keys_total += len(keywords)
        for position, keyword in enumerate(keywords):
            slot = by_slot.setdefault((len(keywords), position + 1), [0, 0])
            slot[0] += keyword in said["with"]
            slot[1] += 1
        outcomes.append({"id": record.id, "keywords": keywords, "said": said["with"], "text": texts["with"]})
        if len(examples) < 5:
            examples.append({"question": meta["question"], "oracle": oracle["text"], **texts})
    return {
        "questions": min(count, index + 1),
        "key_words": keys_total,
        "recall_with_oracle": totals["with"] / max(1, keys_total),
        "recall_without_oracle": totals["without"] / max(1, keys_total),
        "recall_with_oracle_by_slot": {
            f"word {k} of {n}": round(said / asked, 3) for (n, k), (said, asked) in sorted(by_slot.items())
        },
        "examples": examples,
        "per_question": outcomes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/kame-oracle-following"))
    parser.add_argument("--train-count", type=int, default=4000, help="training dialogues (default 4000)")
    parser.add_argument("--held-count", type=int, default=60, help="held-out questions (default 60)")
    parser.add_argument(
        "--response-gap",
        help="LOW,HIGH: seconds from each question's end to its answer in the built data (default: "
        "kame data build's)",
    )
    parser.add_argument("--config", default=str(ROOT / "configs" / "train" / "tiny.yaml"))
    parser.add_argument("--steps", type=int, default=None, help="override the config's steps")
    parser.add_argument("--init", help="override the config's init (e.g. random:tiny-wide)")
    parser.add_argument("--oracle-delay", type=float, default=0.0, help="s after the level-5 oracle time")
    parser.add_argument("--greedy", action="store_true", help="argmax sampling (default: the checkpoint's)")
    parser.add_argument("--retrain", action="store_true", help="delete the training run and train again")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    from kame.cli.data import parse_range
    from kame.errors import UserError

    try:
        response_gap = parse_range(args.response_gap, "--response-gap") if args.response_gap else None
    except UserError as exc:
        parser.error(str(exc))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    import torch

    torch.set_num_threads(1)
    work: Path = args.work
    train_data, held_data, run = work / "train", work / "held", work / "run"

    started = time.monotonic()
    build(train_data, args.train_count, seed=0, response_gap=response_gap)
    build(held_data, args.held_count, seed=1, response_gap=response_gap)
    build_s = time.monotonic() - started

    started = time.monotonic()
    kame(
        "data", "encode", str(train_data / "dataset"), str(held_data / "dataset"), "--frontend", "random:tiny"
    )
    encode_s = time.monotonic() - started

    if args.retrain and run.exists():
        shutil.rmtree(run)
    train_args = ["train", "--config", args.config, "--data", str(train_data / "dataset"), "--out", str(run)]
    train_args += ["--no-progress"] + (["--init", args.init] if args.init else [])
    if args.steps is not None:
        train_args += ["--steps", str(args.steps)]
    cpu_before, started = children_cpu(), time.monotonic()
    kame(*train_args)
    train_wall, train_cpu = time.monotonic() - started, children_cpu() - cpu_before

    started = time.monotonic()
    figures = evaluate(held_data, str(run), work, args.held_count, args.oracle_delay, args.greedy)
    eval_s = time.monotonic() - started
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = max(row["step"] for row in rows)
    result = {
        "train_dialogues": args.train_count,
        "steps": steps,
        "build_s": round(build_s, 1),
        "encode_s": round(encode_s, 1),
        "train_wall_s": round(train_wall, 1),
        "train_cpu_s": round(train_cpu, 1),
        "eval_s": round(eval_s, 1),
        **figures,
    }
    for example in figures["examples"]:  # type: ignore[union-attr]
        print(f"Q: {example['question']}\n  oracle:  {example['oracle']}")
        print(f"  with:    {example['with']}\n  without: {example['without']}")
    by_slot: dict[str, float] = figures["recall_with_oracle_by_slot"]  # type: ignore[assignment]
    places = ", ".join(f"{place} {share:.0%}" for place, share in by_slot.items())
    print(
        f"\nkey-word recall on {figures['questions']} held-out questions ({figures['key_words']} key words):"
        f"\n  with the oracle:    {100 * figures['recall_with_oracle']:.1f} %   (target >= 90 %)"
        f"\n  without an oracle:  {100 * figures['recall_without_oracle']:.1f} %   (target <= 5 %)"
        f"\n  with the oracle, by place in the answer's list: {places}"
        f"\ntraining ({args.train_count} dialogues, {steps} steps): {train_wall:.1f} s wall, "
        f"{train_cpu:.1f} s CPU (target: 120 s on one core)"
        f"\n(data build {build_s:.1f} s, Mimi encoding {encode_s:.1f} s, inference {eval_s:.1f} s)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
