"""Clean-up of generated text into something a person would say and a TTS can speak.

LLM output comes with quotes, labels ("Answer:"), lists and symbols; the recipe wants plain spoken
sentences with only periods and commas, at most 30 words for an oracle. These functions are pure and
deterministic, so the same LLM output always gives the same dataset text.
"""

from __future__ import annotations

import re

_LABEL = re.compile(
    r"^\s*(?:sure[,!.]?\s*)?"
    r"(?:here(?:'s| is)[^:]*:|(?:spoken|your|the)?\s*(?:answer|question|reply|response)\s*:)\s*",
    re.IGNORECASE,
)
_KEEP = re.compile(r"[^A-Za-z0-9'.,?!\s-]")

STOPWORDS = frozenset(
    """a about above after again all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he
    her here hers him his how i if in into is it its itself just me more most my no nor not now of off on
    once only or other our out over own same she should so some such than that the their them then there
    these they this those through to too under until up very was we were what when where which while who
    whom why will with would you your yours yes well also like one two get got let lets""".split()  # noqa: SIM905 - a word list reads better as text
)


def first_paragraph(text: str) -> str:
    parts = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return parts[0] if parts else ""


def spoken(text: str, *, max_words: int | None = None, commas_only: bool = False) -> str:
    """Plain spoken text: no labels, quotes, symbols or line breaks; optionally capped in words.

    ``commas_only`` keeps only periods and commas as punctuation (oracles); otherwise ? and ! stay.
    """
    text = first_paragraph(text)
    text = _LABEL.sub("", text)
    text = text.replace("%", " percent").replace("&", " and ").replace("+", " plus ").replace("=", " equals ")
    text = _KEEP.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip(" -'")
    if commas_only:
        text = re.sub(r"[?!]", ".", text)
    text = re.sub(r"\s+([.,?!])", r"\1", text)
    text = re.sub(r"([.,?!])\1+", r"\1", text)
    words = text.split()
    if max_words is not None and len(words) > max_words:
        words = words[:max_words]
        text = " ".join(words).rstrip(",")
        cut = max(text.rfind("."), text.rfind("?"), text.rfind("!"))
        if cut >= len(text) // 2:  # end on the last whole sentence when that keeps most of it
            text = text[: cut + 1]
    if text and text[-1] not in ".?!":
        text += "."
    return text


def keywords(text: str, limit: int = 6) -> list[str]:
    """Content words of ``text`` in order of first use (no stopwords, no duplicates)."""
    seen: list[str] = []
    for word in re.findall(r"[A-Za-z0-9']+", text):
        lowered = word.lower().strip("'")
        if lowered in STOPWORDS or len(lowered) < 3 and not lowered.isdigit():
            continue
        if lowered not in (s.lower() for s in seen):
            seen.append(word)
    return seen[:limit]


def normalized_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def contains_answer(text: str, final: str) -> bool:
    """Whether ``final`` (a number or a short phrase) is said in ``text``."""
    said = normalized_words(text.replace(",", ""))
    target = normalized_words(final.replace(",", ""))
    if not target:
        return True
    n = len(target)
    return any(said[i : i + n] == target for i in range(len(said) - n + 1))


MIN_KEPT = 0.5


def keeps_content(original: str, rewrite: str, minimum: float = MIN_KEPT) -> bool:
    """Whether ``rewrite`` still says at least ``minimum`` of ``original``'s keywords."""
    wanted = {w.lower() for w in keywords(original, limit=12)}
    if not wanted:
        return bool(rewrite.strip())
    said = set(normalized_words(rewrite))
    return len(wanted & said) >= minimum * len(wanted)


def leaks_answer(question: str, answer: str, rewrite: str) -> bool:
    """Whether a rewritten question says content words of the answer that the question did not have."""
    own = set(normalized_words(question))
    revealing = {w.lower() for w in keywords(answer, limit=12)} - own
    return bool(revealing & set(normalized_words(rewrite)))
