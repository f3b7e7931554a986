"""One session's oracle stream: which oracle token is fed at each front-end step.

Semantics of the released KAME server, kept exactly: ``reset`` puts the start-of-oracle token at the
current step; appended tokens follow one per 80 ms step; steps without one get the pad token; a newer
reset replaces whatever tail of the older oracle was not fed yet; a token whose step has already passed
when it arrives is skipped, never fed late.

What the released server did wrong and this module does not: each streamed chunk was tokenized alone
(so "Bar" + "celona" became two word-start pieces); here text is tokenized a word at a time, holding
back the trailing, possibly unfinished, word until its end is seen (whitespace) or the oracle ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


class StreamingTextTokenizer:
    """Tokenizes streamed text so that pieces are those of the whole text tokenized at once.

    SentencePiece (moshi's tokenizer) splits on whitespace before applying its model, so the pieces of
    complete, whitespace-separated words do not depend on what follows them.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._pending = ""

    def feed(self, text: str) -> list[int]:
        """Add streamed text; return the tokens of the words it completed."""
        self._pending += text
        cut = max(self._pending.rfind(" "), self._pending.rfind("\n"), self._pending.rfind("\t"))
        if cut < 0:
            return []
        complete, self._pending = self._pending[:cut], self._pending[cut + 1 :]
        return self._encode(complete)

    def flush(self) -> list[int]:
        """The oracle ended: tokens of the last word held back."""
        rest, self._pending = self._pending, ""
        return self._encode(rest)

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text)) if text.strip() else []

    @property
    def pending_text(self) -> str:
        return self._pending


@dataclass
class OracleTrack:
    """Schedule of one session's oracle tokens over its own step counter."""

    start_token: int
    pad_token: int
    start_step: int | None = None
    tokens: list[int] = field(default_factory=list)  # tokens[0] is the start token
    skipped: int = 0  # tokens that arrived after their step had passed

    def reset(self, step: int) -> None:
        """A new oracle begins: its start token is fed at ``step``; the unfed tail of the old one is gone."""
        self.start_step = step
        self.tokens = [self.start_token]

    def append(self, token_ids: list[int], step: int) -> int:
        """Schedule tokens after the current oracle's; returns how many were too late (and skipped)."""
        if self.start_step is None or not token_ids:
            return 0
        first_index = len(self.tokens)
        self.tokens.extend(token_ids)
        next_feedable_index = step - self.start_step
        late = max(0, min(len(token_ids), next_feedable_index - first_index))
        self.skipped += late
        return late

    def token_at(self, step: int) -> int:
        """The token fed at ``step``."""
        if self.start_step is None:
            return self.pad_token
        index = step - self.start_step
        if 0 <= index < len(self.tokens):
            return self.tokens[index]
        return self.pad_token

    def clear(self) -> None:
        self.start_step = None
        self.tokens = []
        self.skipped = 0


@dataclass
class SessionOracle:
    """A session's oracle track plus the streaming tokenizer of its current oracle text."""

    track: OracleTrack
    tokenizer: StreamingTextTokenizer | None  # None: the caller appends token ids, not text
    text: str = ""

    def reset(self, step: int) -> None:
        self.track.reset(step)
        if self.tokenizer is not None:
            self.tokenizer.flush()
        self.text = ""

    def append_text(self, text: str, step: int) -> int:
        """Append streamed oracle text; returns the number of its tokens that came too late."""
        if self.tokenizer is None:
            raise RuntimeError("this front-end has no text tokenizer; append token ids instead")
        self.text += text
        return self.track.append(self.tokenizer.feed(text), step)

    def end(self, step: int) -> int:
        """The oracle's text is complete: schedule its held-back last word."""
        return self.track.append(self.tokenizer.flush(), step) if self.tokenizer is not None else 0

    def clear(self) -> None:
        self.track.clear()
        if self.tokenizer is not None:
            self.tokenizer.flush()
        self.text = ""
