"""Full-Duplex-Bench's timing metrics, by the benchmark's own definitions (its ``evaluation/eval_*.py``).

A reply is the list of ASR words in ``output.json`` (``chunks``: ``{"text", "timestamp": [start, end]}``).

- **Take-over (TOR):** 0 when there are no words; 0 when the words span under 1 s (first start to last
  end, or last start when the end is missing) and are at most 3; otherwise 1.
- **Pause handling** (``pause.json``): the mean TOR; lower is better (the model should wait).
- **Smooth turn-taking** (``turn_taking.json``): the mean TOR, and the latency from the turn-taking
  point (its timestamp's start) to the first word, only for TOR = 1 samples, clamped at 0, averaged.
- **User interruption** (``interrupt.json``): the words after the interruption's end only (the audio is
  cut there before ASR and the offset added back), TOR, and the latency from the interruption's end,
  clamped at 0, averaged. (The benchmark also has GPT-4 rate the reply's relevance; that is not timing
  and is not computed here.)
- **v1.5 overlap sets** (``metadata.json`` with the overlap window ``timestamps``): the same TOR and
  latency on the words after the overlap ends, per subset folder, as an interruption is scored (the
  benchmark's own v1.5 scripts judge behaviour with an LLM and time speech with a VAD instead).
"""

from __future__ import annotations

import statistics
from typing import Any

TURN_DURATION_S = 1.0
TURN_MAX_WORDS = 3

Chunk = dict[str, Any]


def take_over(chunks: list[Chunk]) -> int:
    if not chunks:
        return 0
    first, last = chunks[0]["timestamp"], chunks[-1]["timestamp"]
    end = last[1] if last[1] is not None else last[0]
    if end - first[0] < TURN_DURATION_S and len(chunks) <= TURN_MAX_WORDS:
        return 0
    return 1


def latency_from(chunks: list[Chunk], reference: float) -> float | None:
    """First word start minus ``reference`` for a take-over, clamped at 0; None without a take-over."""
    if not take_over(chunks):
        return None
    return max(0.0, chunks[0]["timestamp"][0] - reference)


def after(chunks: list[Chunk], t: float) -> list[Chunk]:
    """The words that start at or after ``t`` (what ASR on the audio cut at ``t`` finds)."""
    return [c for c in chunks if c["timestamp"][0] >= t]


def score_sample(task: str, chunks: list[Chunk], meta: Any) -> dict[str, Any]:
    """``{"tor", "latency"}`` of one sample; ``meta`` is its task file's JSON."""
    if task == "pause_handling":
        return {"tor": take_over(chunks), "latency": None}
    if task == "smooth_turn_taking":
        return {"tor": take_over(chunks), "latency": latency_from(chunks, float(meta[0]["timestamp"][0]))}
    if task == "user_interruption":
        end = float(meta[0]["timestamp"][1])
        heard = after(chunks, end)
        return {"tor": take_over(heard), "latency": latency_from(heard, end)}
    if task.startswith("v1.5/"):
        end = float(meta["timestamps"][1])
        heard = after(chunks, end)
        return {"tor": take_over(heard), "latency": latency_from(heard, end)}
    raise ValueError(f"no timing metric for task {task!r}")


def summarize(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task: samples, mean TOR, mean latency over the take-overs (None when there were none)."""
    tasks: dict[str, dict[str, Any]] = {}
    for task in sorted({s["task"] for s in samples}):
        mine = [s for s in samples if s["task"] == task]
        latencies = [s["latency"] for s in mine if s["latency"] is not None]
        tasks[task] = {
            "samples": len(mine),
            "take_over_rate": round(statistics.fmean(s["tor"] for s in mine), 4),
            "latency": round(statistics.fmean(latencies), 4) if latencies else None,
            "latency_n": len(latencies),
        }
        if task == "pause_handling":
            del tasks[task]["latency"], tasks[task]["latency_n"]
    return tasks
