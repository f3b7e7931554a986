"""Evaluation tests: our own small question and judge-prompt files (nothing of MT-Bench is kept here)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture
def questions_file() -> Path:
    return DATA / "questions.jsonl"


@pytest.fixture
def judge_prompts_file() -> Path:
    return DATA / "judge_prompts.jsonl"


@pytest.fixture
def run():
    return asyncio.run
