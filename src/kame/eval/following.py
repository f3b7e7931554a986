"""Does the assistant say what its oracle says? Scored from a session's timeline.

The measure of the offline default's target: of the first ten words of the last oracle that reached the
front-end (the last stream whose reset was applied), the fraction the assistant says after that reset
was applied. Words are compared lower-cased, letters, digits and apostrophes only, in any order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from kame.events import AssistantWord, LLMDone, OracleApplied, OracleEnd
from kame.events import is_a as _is

FIRST_WORDS = 10


def spoken_words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Za-z0-9']+", text)]


def last_oracle_following(events: Sequence[dict[str, Any]], first_words: int = FIRST_WORDS) -> dict[str, Any]:
    """``{"oracle", "applied_t", "said", "fraction"}`` for a timeline (``kame.events`` records)."""
    texts: dict[int, str] = {}
    for event in events:
        if _is(event, LLMDone, OracleEnd) and "stream" in event:
            texts[int(event["stream"])] = str(event.get("text", ""))
    resets = [
        e for e in events if _is(e, OracleApplied) and e.get("kind") == "reset" and int(e["stream"]) in texts
    ]
    if not resets:
        return {"oracle": None, "applied_t": None, "said": "", "fraction": 0.0}
    last = resets[-1]
    said = " ".join(str(e.get("text", "")) for e in events if _is(e, AssistantWord) and e["t"] >= last["t"])
    target = spoken_words(texts[int(last["stream"])])[:first_words]
    heard = set(spoken_words(said))
    hits = sum(1 for word in target if word in heard)
    return {
        "oracle": texts[int(last["stream"])],
        "applied_t": last["t"],
        "said": said,
        "fraction": hits / max(1, len(target)),
    }
