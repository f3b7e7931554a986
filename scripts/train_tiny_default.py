"""Build the data of the shipped tiny front-end and train it: the offline default that follows oracles.

``--frontend tiny`` (``kame demo``, ``kame serve``, ``kame simulate``) is this script's result, shipped in
``src/kame/frontend/assets/tiny_default/``. It reproduces it in five resumable stages::

    python scripts/train_tiny_default.py --work data/tiny-default \
        --answers scripts/tiny_default_llm_answers.jsonl [--install]

1. ``WORK/llm_answers.jsonl``: the embedded back-end's LLM (``local``, SmolLM2) answers ``--questions``
   questions with the oracle engine's own system prompt and settings (``kame.data.open_qa.questions``);
2. ``WORK/source.jsonl`` + ``WORK/dataset``: ``--count`` spoken dialogues (``kame.data.open_qa.open_rows``:
   a question paired with an answer it does not predict: one of those LLM answers, a run of their words,
   or random words of their vocabulary, in the shares ``KIND_WEIGHTS``), built by ``kame data build
   --no-rewrite --oracles verbatim`` with espeak: the answer is spoken as written and is the level-5
   oracle once the question is heard;
3. ``WORK/pseudo1/dataset``, ``WORK/pseudo2/dataset``: ``--pseudo-sets`` sets of ``--pseudo-count``
   more dialogues each, built the same way (seeds + 1, + 2), whose answers are mostly made-up words of
   2-3 random tokenizer pieces (``open_rows``' ``pseudo`` kind; 44 % of all dialogues): with only real
   words to copy, the model learns which piece follows which inside them and says a word the data never
   had with a familiar ending ("spider" as "sp orn");
4. ``kame train --config configs/train/tiny-default.yaml --data WORK/dataset,WORK/pseudo1/dataset,...
   --out WORK/run``, from ``random:tiny-wide`` (the tiny layout at dim 128; 19 minutes with another
   training on the other core);
5. ``--install``: copy the trained checkpoint into the package (``assets/tiny_default``), with its
   sampling (``LM_GEN_CONFIG``) in its ``config.json``.

It prints the tiny tokenizer's coverage by the training answers (pieces seen at least once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "train" / "tiny-default.yaml"
ASSET = ROOT / "src" / "kame" / "frontend" / "assets" / "tiny_default"
# The assistant answers 0.9-1.8 s after the user's last word, so that in the data it starts speaking once
# its oracle (at the 0.5 s grid point after that word, plus the trainer's 0-6 frame lag) has arrived, as
# the live back-end's final oracle does about 0.7 s after the question ends on this CPU.
RESPONSE_GAP = "0.9,1.8"
SHIPPED = ("config.json", "model.safetensors", "mimi.safetensors", "mimi_config.json", "tokenizer.model")
# Its sampling, written into the shipped config.json as moshi's lm_gen_config: text at temperature 0.2.
# Measured with bench/default_following.py (6 questions) on the previous default (dim 64): 57.8 % over 9
# runs at 0.2, 56.2 % over 2 at 0.7, 49.1 % over 2 greedy; the dim-128 default: 72.1 % over 6 runs at 0.2.
LM_GEN_CONFIG = {"temp_text": 0.2}
# The made-up words' sets: PSEUDO_SETS builds of PSEUDO_COUNT dialogues of open_rows' pseudo kind alone,
# beside the main mix. Measured live (bench/default_following.py, one session): two sets 75.0 % (12 runs),
# one set 68.0 % (6), three 70.4 % (12), none (the weights they replaced) 67.3 % (12).
PSEUDO_SETS = 2
PSEUDO_COUNT = 3200
PSEUDO_WEIGHTS = (0.0, 0.0, 0.0, 1.0)


def llm_answers(path: Path, count: int) -> list[str]:
    """The embedded LLM's answers to ``count`` questions, cached in ``path`` (resumes)."""
    from kame.backend.llm.base import ChatMessage
    from kame.backend.llm.local import LocalLLM
    from kame.backend.oracle_engine import OracleConfig
    from kame.data.open_qa import questions
    from kame.data.text import spoken

    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            done[row["question"]] = row["answer"]
    todo = [q for q in questions(count) if q not in done]
    if todo:
        config = OracleConfig()
        system = config.load_system_prompt()
        llm = LocalLLM()
        started = time.monotonic()
        with path.open("a") as out:
            for index, question in enumerate(todo):
                messages = [ChatMessage("system", system), ChatMessage("user", question)]
                raw = asyncio.run(
                    llm.complete(messages, max_tokens=config.max_tokens, temperature=config.temperature)
                )
                answer = spoken(raw, max_words=30, commas_only=True)
                done[question] = answer
                out.write(json.dumps({"question": question, "answer": answer}) + "\n")
                out.flush()
                if (index + 1) % 50 == 0:
                    print(f"  {index + 1}/{len(todo)} LLM answers, {time.monotonic() - started:.0f} s")
    return [done[q] for q in questions(count)]


def coverage(rows: list[dict[str, object]]) -> tuple[int, int]:
    """(pieces of the tiny tokenizer in the answers, pieces in all)."""
    import sentencepiece

    from kame.frontend.checkpoint import train_tiny_tokenizer

    sp = sentencepiece.SentencePieceProcessor(model_proto=train_tiny_tokenizer())
    seen: set[int] = set()
    for row in rows:
        for word in str(row["answer"]).split():
            seen.update(sp.encode(word))
    return len(seen), sp.get_piece_size()


def kame(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_TORCH_COMPILE": "1"}
    subprocess.run([sys.executable, "-m", "kame", *args], check=True, env=env)


def build(folder: Path, rows: list[dict[str, object]], seed: int) -> None:
    """``rows`` as ``folder/source.jsonl``, built by ``kame data build`` into ``folder/dataset`` (resumes),
    then its codes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "source.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    kame(
        "data", "build", "--source", f"jsonl:{folder / 'source.jsonl'}", "--columns", "id=id",
        "--out", str(folder / "dataset"), "--tts", "espeak", "--no-rewrite", "--oracles", "verbatim",
        "--seed", str(seed), "--no-progress", "--response-gap", RESPONSE_GAP,
    )  # fmt: skip
    kame("data", "encode", str(folder / "dataset"), "--frontend", "random:tiny")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True, help="folder for every stage (resumable)")
    parser.add_argument("--questions", type=int, default=300, help="questions the LLM answers (default 300)")
    parser.add_argument("--count", type=int, default=8000, help="dialogues (default 8000)")
    parser.add_argument(
        "--pseudo-sets", type=int, default=PSEUDO_SETS,
        help=f"sets of made-up words' dialogues, each built apart (default {PSEUDO_SETS}; 0: none)",
    )  # fmt: skip
    parser.add_argument(
        "--pseudo-count", type=int, default=PSEUDO_COUNT,
        help=f"dialogues in each made-up words' set (default {PSEUDO_COUNT})",
    )  # fmt: skip
    parser.add_argument(
        "--answers",
        type=Path,
        help="the LLM answers' cache (default WORK/llm_answers.jsonl); the shipped front-end's are "
        "scripts/tiny_default_llm_answers.jsonl (the LLM samples, so new answers differ)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--stop-after", choices=("answers", "data"), help="stop after this stage")
    parser.add_argument("--install", action="store_true", help="copy the result into the package")
    args = parser.parse_args()
    if args.pseudo_sets < 0 or (args.pseudo_sets and args.pseudo_count < 1):
        parser.error("--pseudo-sets must be >= 0 and --pseudo-count >= 1 (or --pseudo-sets 0 for none)")
    from kame.data.open_qa import open_rows

    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    answers = llm_answers(args.answers or work / "llm_answers.jsonl", args.questions)
    print(f"{len(answers)} LLM answers ({time.monotonic() - started:.0f} s)")
    if args.stop_after == "answers":
        return 0
    rows = open_rows(args.count, answers, seed=args.seed)
    seen, total = coverage(rows)
    print(f"tokenizer coverage: {seen} of {total} pieces appear in the answers")
    started = time.monotonic()
    build(work, rows, args.seed)
    datasets = [work / "dataset"]
    for index in range(1, args.pseudo_sets + 1):
        pseudo, seed = work / f"pseudo{index}", args.seed + index
        build(pseudo, open_rows(args.pseudo_count, answers, seed=seed, weights=PSEUDO_WEIGHTS), seed)
        datasets.append(pseudo / "dataset")
    print(f"data built and encoded in {time.monotonic() - started:.0f} s")
    if args.stop_after == "data":
        return 0
    run = work / "run"
    started = time.monotonic()
    data = ",".join(str(d) for d in datasets)
    kame("train", "--config", str(args.config), "--data", data, "--out", str(run), "--no-progress")
    print(f"trained in {time.monotonic() - started:.0f} s -> {run}")
    if args.install:
        ASSET.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED:
            shutil.copyfile(run / name, ASSET / name)
        config = json.loads((ASSET / "config.json").read_text())
        config["lm_gen_config"] = {**config.get("lm_gen_config", {}), **LM_GEN_CONFIG}
        (ASSET / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        print(f"installed {run} as {ASSET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
