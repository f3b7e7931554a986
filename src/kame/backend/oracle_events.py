"""The one message the back-end sends the front-end: an oracle operation.

KAME's front-end reads an oracle stream alongside the user's audio. The back-end edits it with three
operations (the released server's semantics): ``reset`` starts a new oracle at the current frame,
replacing the unfed tail of the old one; ``append`` adds text to the current oracle; ``end`` says the
current oracle's text is complete (the front-end then releases a held-back last word). A ``reset`` may
carry the new oracle's first text: the runtime applies the reset and then appends that text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

OracleKind = Literal["reset", "append", "end"]
ORACLE_KINDS: tuple[str, ...] = ("reset", "append", "end")


@dataclass(frozen=True)
class OracleEvent:
    """One oracle operation.

    ``stream_id`` names the LLM stream the text comes from (increasing within a session), ``t`` is the
    session time (seconds, the timeline's clock) at which the back-end emitted it.
    """

    kind: OracleKind
    text: str
    stream_id: int
    t: float

    def __post_init__(self) -> None:
        if self.kind not in ORACLE_KINDS:
            raise ValueError(f"an oracle event's kind is one of {', '.join(ORACLE_KINDS)}, not {self.kind!r}")
        if self.kind == "append" and not self.text:
            raise ValueError("an append needs text")


# Called on the event loop for every event, in order; must return at once (no blocking work).
OracleSink = Callable[[OracleEvent], None]
