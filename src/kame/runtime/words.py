"""Turning the front-end's inner-monologue tokens into the words the assistant says.

Moshi's text stream is SentencePiece pieces interleaved with pad tokens; a piece starting with "▁"
begins a word. A word is complete when the next word begins or when the stream pauses (a pad run), so
the back-end's conversation history and the client hear whole words, not sub-word fragments.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

WORD_START = "\u2581"


class PieceTokenizer(Protocol):
    def id_to_piece(self, token_id: int) -> str: ...


class AssistantWords:
    """Collects text tokens into words; ``feed`` returns the words completed by a token."""

    def __init__(self, tokenizer: PieceTokenizer | None, silent_ids: Iterable[int], text_card: int) -> None:
        self._tokenizer = tokenizer
        self._silent = set(silent_ids)
        self._text_card = text_card
        self._word = ""
        self.pieces: list[str] = []  # every piece produced, for the client's text stream

    def feed(self, token: int | None) -> tuple[str | None, list[str]]:
        """Returns (the piece as Moshi's protocol sends it, or None; words completed by this token)."""
        if token is None or self._tokenizer is None:
            return None, []
        if token in self._silent or not 0 <= token < self._text_card:
            return None, self.flush()
        piece = self._tokenizer.id_to_piece(token)
        done: list[str] = []
        if piece.startswith(WORD_START):
            done = self.flush()
            piece_text = " " + piece[1:]
        else:
            piece_text = piece
        self._word += piece_text.strip() if not self._word else piece_text
        self.pieces.append(piece_text)
        return piece_text, done

    def flush(self) -> list[str]:
        word, self._word = self._word.strip(), ""
        return [word] if word else []
