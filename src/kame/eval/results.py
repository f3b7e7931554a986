"""``results.json``: each system's scores per category and its response latency, from the records.

Scores follow FastChat's ``show_result``: the mean of every valid judgment (turns 1 and 2, all runs;
-1 left out) per category; ``average`` is the mean of the category means, as the paper's table.
Latency is the project's response latency over every turn that got a reply (``kame.eval.latency``).
"""

from __future__ import annotations

import statistics
from typing import Any

from kame.eval.judge import NO_SCORE
from kame.eval.latency import latency_stats


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def system_results(
    system: str, answers: list[dict[str, Any]], judgments: list[dict[str, Any]], categories: list[str]
) -> dict[str, Any]:
    mine = [j for j in judgments if j["system"] == system]
    valid = [j for j in mine if j["score"] != NO_SCORE]
    score: dict[str, Any] = {c: _mean([j["score"] for j in valid if j["category"] == c]) for c in categories}
    present = [v for v in score.values() if v is not None]
    score["average"] = round(statistics.fmean(present), 3) if present else None
    rows = [a for a in answers if a["system"] == system]
    turns = sorted({int(a["turn"]) for a in rows})
    conversations = {(str(a["question_id"]), a["run"]): a["wall_s"] for a in rows}
    measured = any(a.get("audio") for a in rows)  # a spoken system (derived ones have no audio of their own)
    return {
        "score": score,
        "turn_score": {str(t): _mean([j["score"] for j in valid if int(j["turn"]) == t]) for t in turns},
        "latency": latency_stats([a["latency"] for a in rows] if measured else []),
        "turn_latency": {
            str(t): latency_stats([a["latency"] for a in rows if int(a["turn"]) == t] if measured else [])
            for t in turns
        },
        "judge_failures": len(mine) - len(valid),
        "judgments": len(mine),
        "conversations": len(conversations),
        "wall_s_per_question": _mean(list(conversations.values())),
    }


def build_results(
    systems: list[str],
    answers: list[dict[str, Any]],
    judgments: list[dict[str, Any]],
    categories: list[str],
    settings: dict[str, Any],
) -> dict[str, Any]:
    return {
        "systems": {s: system_results(s, answers, judgments, categories) for s in systems},
        "categories": categories,
        "settings": settings,
    }
