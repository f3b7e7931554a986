"""Judging: every answered turn is rated by the judge, ``workers`` judgments at a time.

A judgment row: ``system``, ``question_id``, ``category``, ``turn``, ``run``, ``judge`` (the spec),
``prompt`` (the judge prompt's name), ``judge_output`` (the judge's words), ``score`` (-1: no rating),
``parse_failures`` and ``errors``. Turn 2 is judged with both turns' answers, as FastChat does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kame.eval.judge import Judge
from kame.eval.questions import Question

JudgeTask = tuple[str, Question, int, int]  # system, question, run, turn


def judgment_key(record: dict[str, Any]) -> tuple[str, str, int, int]:
    return (record["system"], str(record["question_id"]), int(record["run"]), int(record["turn"]))


def answers_by_conversation(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], list[str]]:
    """(system, question_id, run) -> the transcripts of turns 1, 2, ..."""
    turns: dict[tuple[str, str, int], dict[int, str]] = {}
    for row in rows:
        turns.setdefault((row["system"], str(row["question_id"]), int(row["run"])), {})[int(row["turn"])] = (
            row["transcript"]
        )
    return {key: [by_turn[t] for t in sorted(by_turn)] for key, by_turn in turns.items()}


async def judge_all(
    judge: Judge,
    tasks: list[JudgeTask],
    answers: dict[tuple[str, str, int], list[str]],
    on_judgment: Callable[[dict[str, Any]], None],
    workers: int = 1,
) -> None:
    gate = asyncio.Semaphore(max(1, workers))

    async def one(system: str, question: Question, run: int, turn: int) -> None:
        async with gate:
            name, verdict = await judge.judge(
                question, answers[(system, str(question.question_id), run)], turn
            )
        on_judgment(
            {
                "system": system,
                "question_id": question.question_id,
                "category": question.category,
                "turn": turn,
                "run": run,
                "judge": judge.spec,
                "prompt": name,
                "judge_output": verdict.judge_output,
                "score": verdict.score,
                "parse_failures": verdict.parse_failures,
                "errors": verdict.errors,
            }
        )

    await asyncio.gather(*(one(*task) for task in tasks))
