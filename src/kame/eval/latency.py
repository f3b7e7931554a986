"""Latency figures computed from a session's timeline (the JSONL every run writes).

Definitions follow the field: the user's speech ends at the last word of the final transcript; the
assistant's reaction is its first word after that minus that time (negative: it started before the
user finished, as KAME does); LLM time to first token per request; oracle lag from the back-end to the
front-end's frame boundary. The cascade's response latency is its first reply audio played minus the
user's speech end as the VAD heard it (its stop minus the confirmation silence, Pipecat's rule), with
the stages in between (``kame.events.ReplyStart.STAGES``).
"""

from __future__ import annotations

import statistics
from typing import Any

from kame.events import (
    AssistantWord,
    BargeIn,
    Error,
    Final,
    LLMDone,
    LLMFirstToken,
    LLMRequest,
    OracleApplied,
    OracleReset,
    ReplyEnd,
    ReplyStart,
    TurnEnd,
)
from kame.events import is_a as _is
from kame.timeline import Event


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def user_speech_end(events: list[Event]) -> float | None:
    """Session time when the user's last word ended, if known: the cascade's ``turn_end`` records it
    (the VAD's stop minus its confirmation silence; Whisper stretches last words), else the finals'
    word times."""
    turn_ends = [float(e["user_end"]) for e in events if _is(e, TurnEnd)]
    if turn_ends:
        return max(turn_ends)
    ends = [w[2] for e in events if _is(e, Final) for w in e.get("words", []) if len(w) >= 3]
    return max(ends) if ends else None


def cascade_latency(events: list[Event]) -> dict[str, Any]:
    """The cascade's response latency per reply (``reply_start``) and the median of each stage."""
    starts = [e for e in events if _is(e, ReplyStart)]
    if not starts and not any(_is(e, TurnEnd) for e in events):
        return {}
    ends = [e for e in events if _is(e, ReplyEnd)]
    return {
        "turns": sum(1 for e in events if _is(e, TurnEnd)),
        "replies_started": len(starts),
        "response_latency_s": [round(float(e["latency"]), 3) for e in starts],
        "response_latency_median_s": _median([float(e["latency"]) for e in starts]),
        "stage_medians_s": {s: _median([float(e[s]) for e in starts if s in e]) for s in ReplyStart.STAGES},
        "reply_ends": [e.get("reason") for e in ends],
        "barge_ins": sum(1 for e in events if _is(e, BargeIn)),
    }


def summarize_timeline(events: list[Event]) -> dict[str, Any]:
    finals = [e.get("text", "") for e in events if _is(e, Final) and e.get("text")]
    words = [e for e in events if _is(e, AssistantWord)]
    speech_end = user_speech_end(events)
    after = [e["t"] for e in words if speech_end is not None and e["t"] >= speech_end]
    during = [e for e in words if speech_end is not None and e["t"] < speech_end]
    oracles = [e.get("text", "") for e in events if _is(e, LLMDone)]
    return {
        "user_transcript": " ".join(finals),
        "user_speech_end_s": speech_end,
        "assistant_text": " ".join(e.get("text", "") for e in words),
        "assistant_words_before_user_end": len(during),
        "first_assistant_word_after_end_s": round(after[0] - speech_end, 3) if after and speech_end else None,
        "llm_requests": sum(1 for e in events if _is(e, LLMRequest)),
        "llm_ttft_median_s": _median(
            [float(e["ttft"]) for e in events if _is(e, LLMFirstToken) and "ttft" in e]
        ),
        "oracle_resets": sum(1 for e in events if _is(e, OracleReset)),
        "oracle_lag_median_s": _median(
            [float(e["lag"]) for e in events if _is(e, OracleApplied) and "lag" in e]
        ),
        "final_oracle": oracles[-1] if oracles else None,
        "errors": [e.get("text") or e.get("message") for e in events if _is(e, Error)],
        **cascade_latency(events),
    }


def response_latency(user_end: float, reply_starts: list[float]) -> float | None:
    """The project's response latency: the time of the assistant's first word after the user's turn
    began (``reply_starts``: the starts of the words said from then on), minus the end of the user's last
    word. Negative when the system started before the user finished; None when it never spoke.
    """
    return round(min(reply_starts) - user_end, 3) if reply_starts else None


def latency_stats(latencies: list[float | None]) -> dict[str, Any]:
    """Median, p90 and the share that started before the user finished, over the replies that spoke;
    ``silent`` counts the replies with no word at all."""
    values = sorted(v for v in latencies if v is not None)
    if not values:
        return {"median": None, "p90": None, "n": 0, "before_user_end": None, "silent": len(latencies)}
    import numpy as np

    return {
        "median": round(float(np.median(values)), 3),
        "p90": round(float(np.percentile(values, 90)), 3),
        "n": len(values),
        "before_user_end": round(sum(v < 0 for v in values) / len(values), 3),
        "silent": len(latencies) - len(values),
    }
