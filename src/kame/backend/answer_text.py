"""Shaping an LLM's streamed answer into oracle text: speakable characters only, and a word limit.

Pure functions of the chunks, so that the oracle engine's stream runner only decides what to do with
them.
"""

from __future__ import annotations

import re

# Characters a speech synthesizer would read out literally or choke on (markdown, code, tables).
UNSPEAKABLE = re.compile(r"[*#_`~|<>\[\]{}\\^]")


def clean_chunk(text: str, *, first: bool, speakable_only: bool = True) -> str:
    """One streamed chunk as oracle text: symbols dropped, line breaks as spaces; the first chunk of an
    answer loses its leading space."""
    if speakable_only:
        text = UNSPEAKABLE.sub("", text)
    text = text.replace("\r", " ").replace("\n", " ").replace("\t", " ")
    return text.lstrip() if first else text


def cap_words(said: str, text: str, limit: int | None) -> tuple[str, bool]:
    """Cut the new chunk ``text`` (after ``said``) where the answer reaches ``limit`` words; returns
    (the part to keep, whether the answer was cut)."""
    if limit is None:
        return text, False
    combined = said + text
    if len(combined.split()) <= limit:
        return text, False
    words = re.finditer(r"\S+", combined)
    end = next(m.end() for i, m in enumerate(words) if i == limit - 1)
    return (combined[len(said) : end] if end > len(said) else ""), True
