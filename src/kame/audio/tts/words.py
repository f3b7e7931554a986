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
    written: str  # its whitespace-separated token, punctuation included ("France?"), as a monologue spells it


def text_words(text: str) -> list[TextWord]:
    """The words of ``text`` with their character spans and the tokens they were written in."""
    words = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        core = _EDGE.sub("", token)
        if not core:
            continue
        offset = token.find(core)
        start = match.start() + offset
        words.append(TextWord(core, start, start + len(core), token))
    return words


def spoken_words(text: str) -> list[str]:
    """The words of ``text``, as ``Speech.words`` lists them."""
    return [w.word for w in text_words(text)]
