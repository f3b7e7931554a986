"""One session's oracle stream: which oracle token is fed at each front-end step.

Semantics of the released KAME server, kept exactly: ``reset`` puts the start-of-oracle token at the
current step; appended tokens follow one per 80 ms step; steps without one get the pad token; a newer
reset replaces whatever tail of the older oracle was not fed yet; a token whose step has already passed
when it arrives is skipped, never fed late.

What the released server did wrong and this module does not: each streamed chunk was tokenized alone
(so "Bar" + "celona" became two word-start pieces). Here text is tokenized a word at a time, holding
back the trailing, possibly unfinished, word until whitespace ends it. A held word is never lost or
made late by that: as soon as its first token's slot comes due it is released, tokenized as it stands,
and whatever more of the word arrives later follows as continuation pieces (no word-start marker).
When an oracle's text is complete (``end``), its held word is released at once.

``render_oracle_stream`` replays timed oracle events through the same classes, so training data and
inference feed the model by one rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from kame.oracle import ORACLE_KINDS

WORD_START = "\u2581"  # SentencePiece's word-start marker


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


def continuation_ids(tokenizer: Tokenizer, released: str, more: str) -> list[int]:
    """Token ids that continue the word ``released`` (already fed) with ``more``, without a word start.

    When the whole word tokenizes as the released pieces plus a tail, that tail is used (the pieces a
    one-shot tokenization gives). Otherwise ``more``'s pieces lose their word-start marker, falling back
    to single characters for pieces the vocabulary lacks (SentencePiece's byte fallback covers the rest).
    """
    if not more:
        return []
    whole, head = list(tokenizer.encode(released + more)), list(tokenizer.encode(released))
    if whole[: len(head)] == head:
        return whole[len(head) :]
    encode_pieces = getattr(tokenizer, "encode_as_pieces", None)
    piece_to_id = getattr(tokenizer, "piece_to_id", None)
    if encode_pieces is None or piece_to_id is None:  # a tokenizer without pieces: the best we have
        return whole[len(head) :] if len(whole) > len(head) else list(tokenizer.encode(more))
    unknown = tokenizer.unk_id() if hasattr(tokenizer, "unk_id") else -1
    ids: list[int] = []
    for index, piece in enumerate(encode_pieces(more)):
        if index == 0:
            piece = piece.removeprefix(WORD_START)
            if not piece:
                continue
        piece_id = piece_to_id(piece)
        if piece_id != unknown:
            ids.append(piece_id)
            continue
        for char in piece:  # not a piece on its own without the marker: spell it
            char_id = piece_to_id(char)
            if char_id != unknown:
                ids.append(char_id)
            else:
                ids.extend(piece_to_id(f"<0x{byte:02X}>") for byte in char.encode("utf-8"))
    return ids


class StreamingTextTokenizer:
    """Tokenizes streamed text so that pieces are those of the whole text tokenized at once.

    SentencePiece (moshi's tokenizer) splits on whitespace before applying its model, so the pieces of
    complete, whitespace-separated words do not depend on what follows them. The trailing word is held
    until it is complete or ``release``d; after a release, the rest of that word is a continuation.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._pending = ""  # text not tokenized yet: the trailing, unfinished word
        self._released = ""  # the part of the current word already tokenized by ``release``

    def feed(self, text: str) -> list[int]:
        """Add streamed text; return the tokens of the words it completed."""
        self._pending += text
        cut = max(self._pending.rfind(" "), self._pending.rfind("\n"), self._pending.rfind("\t"))
        if cut < 0:
            return []
        complete, self._pending = self._pending[:cut], self._pending[cut + 1 :]
        tokens: list[int] = []
        if self._released:
            head, rest = _split_first_word(complete)
            tokens += continuation_ids(self._tokenizer, self._released, head)
            self._released, complete = "", rest
        return tokens + self._encode(complete)

    def release(self) -> list[int]:
        """Tokenize the held word as it stands (its slot is due); more of it continues it."""
        rest, self._pending = self._pending, ""
        if self._released:
            tokens = continuation_ids(self._tokenizer, self._released, rest)
            self._released += rest
            return tokens
        tokens = self._encode(rest)
        self._released = rest if tokens else ""
        return tokens

    def flush(self) -> list[int]:
        """The text is complete: tokens of the held word, and nothing continues it."""
        tokens = self.release()
        self._released = ""
        return tokens

    def clear(self) -> None:
        """Forget everything held (a new oracle begins)."""
        self._pending = self._released = ""

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text)) if text.strip() else []

    @property
    def pending_text(self) -> str:
        return self._pending


def _split_first_word(text: str) -> tuple[str, str]:
    """``"lona is"`` -> ``("lona", "is")``; ``" is"`` -> ``("", "is")``."""
    for index, char in enumerate(text):
        if char in " \n\t":
            return text[:index], text[index + 1 :]
    return text, ""


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

    def apply(self, kind: str, text: str, step: int) -> int:
        """Apply one oracle operation before ``step``; returns how many tokens came too late.

        ``reset`` starts a new oracle (with ``text`` as its first chunk, if any), ``append`` streams more
        of it, ``end`` says its text is complete. The one dispatch every caller uses.
        """
        if kind == "reset":
            self.reset(step)
            return self.append_text(text, step) if text else 0
        if kind == "append":
            return self.append_text(text, step)
        if kind == "end":
            return self.end(step)
        raise ValueError(f"unknown oracle operation {kind!r}; expected one of {', '.join(ORACLE_KINDS)}")

    def reset(self, step: int) -> None:
        """A new oracle begins at ``step``: the old one's unfed tail, held word included, is replaced."""
        self.track.reset(step)
        if self.tokenizer is not None:
            self.tokenizer.clear()
        self.text = ""

    def append_text(self, text: str, step: int) -> int:
        """Append streamed oracle text; returns the number of its tokens that came too late."""
        if self.tokenizer is None:
            raise RuntimeError("this front-end has no text tokenizer; append token ids instead")
        self.text += text
        late = self.track.append(self.tokenizer.feed(text), step)
        return late + self.release_due(step)

    def end(self, step: int) -> int:
        """The oracle's text is complete: schedule its held-back last word now."""
        return self.track.append(self.tokenizer.flush(), step) if self.tokenizer is not None else 0

    def release_due(self, step: int) -> int:
        """Before feeding ``step``: release the held word if its first token's slot has come.

        Returns how many of its tokens were late (only when its text itself arrived after the slot).
        """
        tokenizer, track = self.tokenizer, self.track
        if tokenizer is None or track.start_step is None or not tokenizer.pending_text:
            return 0
        if step - track.start_step < len(track.tokens):
            return 0  # tokens already scheduled still cover this step
        return track.append(tokenizer.release(), step)

    def token_at(self, step: int) -> int:
        """The token fed at ``step``, after releasing a held word that is due."""
        self.release_due(step)
        return self.track.token_at(step)

    def clear(self) -> None:
        self.track.clear()
        if self.tokenizer is not None:
            self.tokenizer.clear()
        self.text = ""


def render_oracle_stream(
    events: Iterable[tuple[int, str]],
    steps: int,
    tokenizer: Tokenizer,
    start_token: int,
    pad_token: int,
) -> list[int]:
    """The oracle token fed at each of ``steps`` steps for complete oracles ``(step, text)``.

    Each oracle is reset before its step with its whole text, as an offline script's oracle is: the
    start token at that step, its tokens one per step after it, pad elsewhere, a later oracle
    replacing the earlier one's tail. This is the streaming rule itself (``SessionOracle``), replayed.
    """
    oracle = SessionOracle(OracleTrack(start_token, pad_token), StreamingTextTokenizer(tokenizer))
    # Stable: events of one step keep their order. Events before step 0 or after the last never apply.
    ordered = sorted((event for event in events if event[0] >= 0), key=lambda event: event[0])
    stream, index = [], 0
    for step in range(steps):
        while index < len(ordered) and ordered[index][0] <= step:
            oracle.apply("reset", ordered[index][1], step)
            oracle.end(step)
            index += 1
        stream.append(oracle.token_at(step))
    return stream
