"""Turning the front-end's inner-monologue tokens into the words the assistant says.

Moshi's text stream is SentencePiece pieces interleaved with pad tokens; a piece starting with "▁"
begins a word. A word is complete when the next word begins or when the stream pauses (a pad run), so
the back-end's conversation history and the client get whole words, not sub-word fragments. Byte
pieces (``<0xE2>``, SentencePiece's fallback for characters outside its vocabulary) are decoded as
UTF-8 once a character's bytes are complete; invalid bytes are dropped rather than shown as codes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

WORD_START = "\u2581"
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class PieceTokenizer(Protocol):
    def id_to_piece(self, token_id: int) -> str: ...


class AssistantWords:
    """Collects text tokens into words; ``feed`` returns the text to show and the words completed."""

    def __init__(self, tokenizer: PieceTokenizer | None, silent_ids: Iterable[int], text_card: int) -> None:
        self._tokenizer = tokenizer
        self._silent = set(silent_ids)
        self._text_card = text_card
        self._word = ""
        self._bytes = bytearray()  # an unfinished UTF-8 character from byte pieces

    def feed(self, token: int | None) -> tuple[str | None, list[str]]:
        """Returns (the text this token adds, as Moshi's protocol sends it, or None; completed words)."""
        if token is None or self._tokenizer is None:
            return None, []
        if token in self._silent or not 0 <= token < self._text_card:
            return None, self.flush()
        piece = self._tokenizer.id_to_piece(token)
        match = _BYTE_PIECE.match(piece)
        if match:
            return self._add(self._decode_byte(int(match.group(1), 16))), []
        self._bytes.clear()  # a character left unfinished is dropped
        done: list[str] = []
        if piece.startswith(WORD_START):
            done = self.flush()
            piece = " " + piece[1:]
        return self._add(piece), done

    def _decode_byte(self, value: int) -> str:
        self._bytes.append(value)
        try:
            text = self._bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.reason == "unexpected end of data" and len(self._bytes) < 4:
                return ""  # wait for the character's other bytes
            text = ""  # not UTF-8: drop it
        self._bytes.clear()
        return text if text.isprintable() else ""

    def _add(self, text: str) -> str | None:
        if not text:
            return None
        self._word += text.lstrip() if not self._word else text
        return text

    def flush(self) -> list[str]:
        self._bytes.clear()
        word, self._word = self._word.strip(), ""
        return [word] if word else []
