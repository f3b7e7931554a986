"""Two-turn questions in MT-Bench's ``question.jsonl`` format, from a file or the official set.

A line is ``{"question_id", "category", "turns": [TEXT, ...], "reference"?: [TEXT, ...]}``, as FastChat
writes it. ``reference`` holds the reference answers per turn (FastChat keeps them in a separate
``reference_answer/gpt-4.jsonl``; ``load_mtbench`` merges them in). ``mtbench`` names the 80 official
questions (see ``mtbench_source``); nothing of MT-Bench is kept in this repository.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kame.errors import UserError
from kame.jsonl import json_objects

# The paper's subset: reasoning 101-110, STEM 141-150, humanities 151-160.
PAPER_CATEGORIES = ("reasoning", "stem", "humanities")
# FastChat judges these against a reference answer (its NEED_REF_CATS).
REFERENCE_CATEGORIES = frozenset({"math", "reasoning", "coding", "arena-hard-200"})


class QuestionError(UserError, ValueError):
    """A question file or entry that cannot be used; the message says where and what to fix."""


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] = field(default_factory=tuple)

    @property
    def needs_reference(self) -> bool:
        return self.category in REFERENCE_CATEGORIES

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "question_id": self.question_id,
            "category": self.category,
            "turns": list(self.turns),
        }
        if self.reference:
            out["reference"] = list(self.reference)
        return out


def parse_question(obj: dict[str, Any], where: str) -> Question:
    for key in ("question_id", "category", "turns"):
        if key not in obj:
            raise QuestionError(f"{where}: a question needs {key!r} (MT-Bench's question.jsonl format)")
    turns = obj["turns"]
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise QuestionError(f"{where}: 'turns' must be a list of one or more non-empty strings")
    reference = obj.get("reference") or []
    if not isinstance(reference, list) or not all(isinstance(r, str) for r in reference):
        raise QuestionError(f"{where}: 'reference' must be a list of strings (one per turn)")
    category = str(obj["category"]).strip().lower()
    if category in REFERENCE_CATEGORIES and len(reference) < len(turns):
        raise QuestionError(
            f"{where}: category {category!r} is judged against a reference answer per turn; "
            f"give 'reference' with {len(turns)} answers"
        )
    return Question(obj["question_id"], category, tuple(turns), tuple(reference))


def read_questions(path: str | Path) -> list[Question]:
    path = Path(path)
    if not path.is_file():
        raise QuestionError(f"{path}: no such question file (MT-Bench's question.jsonl format, or 'mtbench')")
    with path.open(encoding="utf-8") as file:
        questions = [
            parse_question(obj, where) for where, obj in json_objects(file, str(path), QuestionError)
        ]
    return _unique(questions, str(path))


def load_questions(
    source: str, categories: Iterable[str] | None = None, limit: int | None = None
) -> list[Question]:
    """``source`` is ``mtbench`` or a question.jsonl path; keep ``categories`` (all when None), then the
    first ``limit`` per category."""
    if source == "mtbench":
        from kame.eval.mtbench_source import load_mtbench

        questions = load_mtbench()
    else:
        questions = read_questions(source)
    if categories is not None:
        wanted = [c.strip().lower() for c in categories if c.strip()]
        present = {q.category for q in questions}
        missing = [c for c in wanted if c not in present]
        if missing:
            raise QuestionError(
                f"no question of categor{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)} in "
                f"{source}; it has {', '.join(sorted(present))}"
            )
        questions = [q for q in questions if q.category in wanted]
    if limit is not None:
        if limit < 1:
            raise QuestionError(f"--limit must be 1 or more, got {limit}")
        kept: dict[str, int] = {}
        selected = []
        for q in questions:
            kept[q.category] = kept.get(q.category, 0) + 1
            if kept[q.category] <= limit:
                selected.append(q)
        questions = selected
    if not questions:
        raise QuestionError(f"{source}: no questions to ask")
    return questions


def _unique(questions: list[Question], source: str) -> list[Question]:
    seen: set[Any] = set()
    for q in questions:
        if q.question_id in seen:
            raise QuestionError(f"{source}: question_id {q.question_id!r} appears twice")
        seen.add(q.question_id)
    return questions
