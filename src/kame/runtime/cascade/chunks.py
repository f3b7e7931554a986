"""Streaming LLM text cut into speakable chunks: whole sentences, or clauses once they are long enough.

A TTS without streaming input (Piper, espeak-ng) speaks a chunk at a time, so the first chunk decides
when the reply can start: it is cut at the first clause mark (``,;:``) once it has ``first_clause_words``
words, later chunks at clause marks once they have ``clause_words``, and any chunk at ``max_words``.
Sentence ends always cut. Symbols a synthesiser would read out literally (markdown, code) are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kame.backend.answer_text import UNSPEAKABLE

_SENTENCE_END = ".!?…"
_CLAUSE_END = ",;:"


@dataclass
class ChunkerConfig:
    first_clause_words: int = 3
    clause_words: int = 8
    max_words: int = 30

    def __post_init__(self) -> None:
        if min(self.first_clause_words, self.clause_words, self.max_words) < 1:
            raise ValueError("chunk word counts must be >= 1")


def speakable(text: str) -> str:
    """``text`` without symbols a synthesiser cannot say, on one line."""
    return re.sub(r"\s+", " ", UNSPEAKABLE.sub("", text))


class SpeakableChunker:
    """``feed`` text as it streams, get the chunks it completes; ``flush`` the rest at the end."""

    def __init__(self, config: ChunkerConfig | None = None) -> None:
        self.config = config or ChunkerConfig()
        self._buffer = ""
        self.chunks = 0

    def feed(self, text: str) -> list[str]:
        self._buffer += speakable(text)
        out: list[str] = []
        while (cut := self._cut()) is not None:
            chunk, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if _has_words(chunk):
                out.append(chunk)
                self.chunks += 1
        return out

    def flush(self) -> list[str]:
        chunk, self._buffer = self._buffer.strip(), ""
        if not _has_words(chunk):
            return []
        self.chunks += 1
        return [chunk]

    def _cut(self) -> int | None:
        """Where the buffer's first complete chunk ends (a mark counts once the next character came)."""
        text = self._buffer
        words = 0
        in_word = False
        clause_limit = self.config.first_clause_words if self.chunks == 0 else self.config.clause_words
        for index, char in enumerate(text):
            if char.isspace():
                if in_word:
                    words += 1
                    in_word = False
                    if words >= self.config.max_words:
                        return index
                continue
            in_word = True
            if index + 1 >= len(text) or not text[index + 1].isspace():
                continue  # "3.5", "e.g." mid-word, or the next character has not arrived yet
            if char in _SENTENCE_END:
                return index + 1
            if char in _CLAUSE_END and words + 1 >= clause_limit:
                return index + 1
        return None


def _has_words(text: str) -> bool:
    return any(ch.isalnum() for ch in text)
