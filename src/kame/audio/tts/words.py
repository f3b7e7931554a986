"""What counts as a word of a text, and where it sits: the units that TTS word times refer to.

A word is a whitespace-separated token with its leading and trailing punctuation removed ("France?" is
"France", "it's" stays "it's"); tokens with no letter or digit ("-", "...") are not words. Every engine
reports times for exactly these words, in order, so callers can zip them with ``spoken_words(text)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"\S+")
_EDGE = re.compile(r"^[\W_]+|[\W_]+$")


@dataclass(frozen=True)
class TextWord:
    word: str
    start: int  # character offsets of the word in the text (end exclusive)
    end: int


def text_words(text: str) -> list[TextWord]:
    """The words of ``text`` with their character spans."""
    words = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        core = _EDGE.sub("", token)
        if not core:
            continue
        offset = token.find(core)
        start = match.start() + offset
        words.append(TextWord(core, start, start + len(core)))
    return words


@dataclass(frozen=True)
class WrittenWord:
    word: str  # the bare word, as TTS word times name it
    written: str  # its whitespace-separated token, punctuation included ("France?")


def written_words(text: str) -> list[WrittenWord]:
    """The words of ``text`` beside the tokens they were written in (for an inner monologue)."""
    out = []
    for match in _TOKEN.finditer(text):
        core = _EDGE.sub("", match.group())
        if core:
            out.append(WrittenWord(core, match.group()))
    return out


def spoken_words(text: str) -> list[str]:
    """The words of ``text``, as ``Speech.words`` lists them."""
    return [w.word for w in text_words(text)]
