"""Word error rate: how the STT engines are scored in tests and benchmarks.

Both texts are normalized the same way before counting (lower case, punctuation dropped, hyphens split,
numbers up to 999,999 spelled out), so that "42." and "forty two" or "Sky" and "sky" are not errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def spell_number(n: int) -> str:
    """0 <= n < 1,000,000 in words ("forty two")."""
    if n < 0 or n >= 1_000_000:
        raise ValueError(f"spell_number handles 0..999999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + spell_number(rest))
    rest = n % 1000
    return spell_number(n // 1000) + " thousand" + ("" if rest == 0 else " " + spell_number(rest))


def normalize(text: str) -> list[str]:
    """The words of ``text`` as they are compared."""
    text = text.lower().replace("-", " ").replace("%", " percent")
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)
    text = re.sub(
        r"\d+", lambda m: f" {spell_number(int(m.group()))} " if len(m.group()) <= 6 else m.group(), text
    )
    text = re.sub(r"[^a-z0-9' ]", " ", text)
    return [word.strip("'") for word in text.split() if word.strip("'")]


@dataclass(frozen=True)
class WERResult:
    errors: int  # substitutions + deletions + insertions
    reference_words: int

    @property
    def wer(self) -> float:
        return self.errors / self.reference_words if self.reference_words else float(self.errors > 0)


def word_errors(reference: str, hypothesis: str) -> WERResult:
    """Edit distance between the normalized word sequences."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, hyp_word in enumerate(hyp, start=1):
            current = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (ref_word != hyp_word))
            previous = current
    return WERResult(row[len(hyp)], len(ref))


def wer(reference: str, hypothesis: str) -> float:
    return word_errors(reference, hypothesis).wer


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """Total errors over total reference words of ``(reference, hypothesis)`` pairs."""
    results = [word_errors(ref, hyp) for ref, hyp in pairs]
    words = sum(r.reference_words for r in results)
    return sum(r.errors for r in results) / words if words else 0.0
