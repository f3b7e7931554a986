"""The one message the back-end sends the front-end: an oracle operation.

KAME's front-end reads an oracle stream alongside the user's audio. The back-end edits it with three
operations (the released server's semantics): ``reset`` starts a new oracle at the current frame,
replacing the unfed tail of the old one; ``append`` adds text to the current oracle; ``end`` says the
current oracle's text is complete (the front-end then releases a held-back last word). A ``reset`` may
carry the new oracle's first text: the front-end applies the reset and then appends that text.

The same type serves the live back-end (the oracle engine emits it) and offline runs (an oracle script
is a list of them), so both reach the front-end through one dispatch (``SessionOracle.apply``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from kame.frames import frame_of

OracleKind = Literal["reset", "append", "end"]
ORACLE_KINDS: tuple[str, ...] = ("reset", "append", "end")


@dataclass(frozen=True)
class OracleOp:
    """One oracle operation.

    ``t`` is the session time (seconds) at which it is due: when the back-end emitted it, or the time a
    script gives it (applied before the step of frame ``frame``). ``stream_id`` names the LLM stream the
    text comes from (increasing within a session; 0 in scripts).
    """

    kind: OracleKind
    text: str = ""
    stream_id: int = 0
    t: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ORACLE_KINDS:
            raise ValueError(f"an oracle operation is one of {', '.join(ORACLE_KINDS)}, not {self.kind!r}")
        if self.kind == "append" and not self.text:
            raise ValueError("an append needs text")

    @property
    def frame(self) -> int:
        """The frame before whose step it applies (``kame.frames.frame_of``)."""
        return frame_of(self.t)


# Called on the event loop for every operation, in order; must return at once (no blocking work).
OracleSink = Callable[[OracleOp], None]
