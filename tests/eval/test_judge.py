"""Judging as FastChat applies it: prompt choice, filled templates, rating parsing, retries, the grammar."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kame.backend.llm import ChatMessage, LLMError, LLMProvider
from kame.eval.judge import (
    NO_SCORE,
    Judge,
    JudgeError,
    judge_messages,
    load_prompts,
    parse_rating,
    prompt_name,
)
from kame.eval.questions import Question

STEM = Question(7, "stem", ("Why is the sky blue?", "And why are sunsets red?"))
REASONING = Question(8, "reasoning", ("Is 9 prime?", "Is 11 prime?"), ("No, 9 = 3 x 3.", "Yes."))

# Judge outputs as judges write them, well-formed and not (recorded by hand in the judges' styles).
RECORDED = [
    ("The answer is correct and clear.\n\nRating: [[8]]", 8.0),
    ("Accurate but terse. Rating: [[6.5]]", 6.5),
    ("I would give this [7] out of ten.", 7.0),  # FastChat's fallback: single brackets
    ("Rating: 9", 9.0),  # NVIDIA's extra pattern
    ("Rating: 12", NO_SCORE),  # out of the 1-10 range
    ("Scores: [[3]] for the first, then [[9]]", 3.0),  # the first match wins, as re.search does
    ("It is a decent answer, I'd say eight.", NO_SCORE),
    ("[[]]", NO_SCORE),
    ("", NO_SCORE),
]


@pytest.mark.parametrize(("output", "score"), RECORDED)
def test_ratings_are_parsed_with_fastchats_patterns(output, score):
    assert parse_rating(output) == score


def test_prompt_choice_follows_fastchat():
    assert prompt_name(STEM, 1) == "single-v1"
    assert prompt_name(STEM, 2) == "single-v1-multi-turn"
    assert prompt_name(REASONING, 1) == "single-math-v1"  # reasoning is judged against the reference
    assert prompt_name(REASONING, 2) == "single-math-v1-multi-turn"


def test_templates_are_filled_like_fastchats_create_conv_single(judge_prompts_file):
    prompts = load_prompts(str(judge_prompts_file))
    system, user = judge_messages(prompts["single-v1"], STEM, ["Rayleigh scattering.", "Longer path."], 1)
    assert system.role == "system" and system.content == prompts["single-v1"].system_prompt
    assert "Why is the sky blue?" in user.content and "Rayleigh scattering." in user.content
    assert "sunsets" not in user.content and "Longer path." not in user.content
    _, user = judge_messages(prompts["single-math-v1-multi-turn"], REASONING, ["No.", "Yes."], 2)
    for text in ("Is 9 prime?", "Is 11 prime?", "No, 9 = 3 x 3.", "Yes."):
        assert text in user.content


def test_judge_prompt_files_are_checked(tmp_path, judge_prompts_file):
    partial = tmp_path / "prompts.jsonl"
    partial.write_text(judge_prompts_file.read_text().splitlines()[0] + "\n")
    with pytest.raises(JudgeError, match="single-math-v1"):
        load_prompts(str(partial))
    with pytest.raises(JudgeError, match="no such"):
        load_prompts(str(tmp_path / "none.jsonl"))


class Replay(LLMProvider):
    """Plays back recorded judge outputs (or errors) in order, recording what it was asked."""

    name = "replay"

    def __init__(self, outputs: list[str | Exception]) -> None:
        self.outputs = list(outputs)
        self.calls: list[tuple[list[ChatMessage], float]] = []

    async def stream_chat(self, messages, *, max_tokens=96, temperature=0.3) -> AsyncIterator[str]:
        self.calls.append((messages, temperature))
        item = self.outputs.pop(0)
        if isinstance(item, Exception):
            raise item
        yield item


def test_a_reply_without_a_rating_is_asked_again(run, judge_prompts_file):
    prompts = load_prompts(str(judge_prompts_file))
    llm = Replay(["Good answer overall.", LLMError("replay", "timeout", retryable=True), "Fine. [[5]]"])
    judge = Judge("openai:judge", prompts, attempts=3, llm=llm)
    name, verdict = run(judge.judge(STEM, ["Rayleigh scattering.", "Longer path."], 1))
    assert name == "single-v1" and verdict.score == 5.0
    assert verdict.parse_failures == 1 and len(verdict.errors) == 1
    assert all(temperature == 0.0 for _, temperature in llm.calls)  # FastChat judges at temperature 0


def test_no_rating_after_every_attempt_scores_minus_one(run, judge_prompts_file):
    judge = Judge(
        "openai:judge", load_prompts(str(judge_prompts_file)), attempts=2, llm=Replay(["meh", "meh"])
    )
    _, verdict = run(judge.judge(STEM, ["a", "b"], 2))
    assert verdict.score == NO_SCORE and verdict.parse_failures == 2 and verdict.judge_output == "meh"


def test_the_embedded_judge_always_returns_a_rating(run, judge_prompts_file):
    judge = Judge("local", load_prompts(str(judge_prompts_file)))
    assert judge.constrained
    try:
        name, verdict = run(judge.judge(REASONING, ["It is not prime.", "It is prime."], 2))
    finally:
        run(judge.aclose())
    assert name == "single-math-v1-multi-turn"
    assert 1 <= verdict.score <= 10 and verdict.parse_failures == 0, verdict
