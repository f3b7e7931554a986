"""Map the phoneme words a synthesizer spoke back onto the words of the text.

espeak-ng (which phonemizes for Piper) does not keep one phoneme word per written word: it joins some
function words ("of the" can become one word) and splits numbers ("1999" becomes three). Given each text
word's phonemes spoken alone as a reference, a small dynamic program over the two sequences finds the
best grouping: one text word to 0-4 phoneme words, or 2-4 text words sharing one phoneme word (their time
is then split in proportion to their reference phoneme lengths). Costs are string dissimilarities of the
phonemes with stress marks removed, so small context changes (reduced vowels) still match.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher

from kame.audio.tts.base import WordTiming

_STRESS = str.maketrans("", "", "ˈˌ-")
SKIP_COST = 1.0  # a text word with no phonemes, or phonemes with no text word
MAX_GROUP = 4
BAND = 8  # how far (in phoneme words) the alignment may wander from the expected diagonal


@dataclass(frozen=True)
class SpokenWord:
    """A run of phonemes between spaces, with its time in the audio (seconds)."""

    phonemes: str
    start: float
    end: float


def _dissimilarity(a: str, b: str) -> float:
    a, b = a.translate(_STRESS), b.translate(_STRESS)
    if not a and not b:
        return 0.0
    return 1.0 - SequenceMatcher(None, a, b, autojunk=False).ratio()


def align_words(words: list[str], references: list[str], spoken: list[SpokenWord]) -> list[WordTiming] | None:
    """Times for ``words`` (reference phonemes ``references``, phoneme words joined by spaces).

    None when no alignment fits (the texts differ too much): callers then align another way.
    """
    n, m = len(words), len(spoken)
    if n == 0:
        return []
    if m == 0:
        return None
    ref_counts = [max(1, len(r.split())) for r in references]
    expected = [0]
    for count in ref_counts:
        expected.append(expected[-1] + count)
    scale = m / max(1, expected[-1])
    inf = float("inf")
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    back: list[list[tuple[int, int] | None]] = [[None] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = 0.0
    flat = [r.replace(" ", "") for r in references]
    for i in range(n + 1):
        centre = expected[i] * scale
        for j in range(max(0, int(centre) - BAND), min(m, int(centre) + BAND) + 1):
            here = cost[i][j]
            if here == inf:
                continue
            moves: list[tuple[int, int, float]] = []
            if j < m:  # phoneme word with no text word
                moves.append((0, 1, SKIP_COST))
            if i < n:
                moves.append((1, 0, SKIP_COST))  # text word not spoken
                for g in range(1, MAX_GROUP + 1):  # one text word, g phoneme words
                    if j + g <= m:
                        said = "".join(s.phonemes for s in spoken[j : j + g])
                        moves.append((1, g, _dissimilarity(flat[i], said) + 0.05 * (g - 1)))
                for k in range(2, MAX_GROUP + 1):  # k text words, one phoneme word
                    if i + k <= n and j < m:
                        joined = "".join(flat[i : i + k])
                        moves.append((k, 1, _dissimilarity(joined, spoken[j].phonemes) + 0.05 * (k - 1)))
            for di, dj, step in moves:
                if here + step < cost[i + di][j + dj]:
                    cost[i + di][j + dj] = here + step
                    back[i + di][j + dj] = (di, dj)
    if cost[n][m] == inf:  # the alignment left the band
        return None
    path: list[tuple[int, int, int, int]] = []
    i, j = n, m
    while i or j:
        step = back[i][j]
        if step is None:
            return None
        di, dj = step
        path.append((i - di, di, j - dj, dj))
        i, j = i - di, j - dj
    path.reverse()
    timings: list[WordTiming] = []
    cursor = spoken[0].start
    for i0, di, j0, dj in path:
        if di == 0:
            continue
        if dj == 0:
            timings.append(WordTiming(words[i0], cursor, cursor))
            continue
        start, end = spoken[j0].start, spoken[j0 + dj - 1].end
        if di == 1:
            timings.append(WordTiming(words[i0], start, end))
        else:
            lengths = [max(1, len(flat[i0 + k])) for k in range(di)]
            total = sum(lengths)
            t = start
            for k in range(di):
                t_end = t + (end - start) * lengths[k] / total
                timings.append(WordTiming(words[i0 + k], t, t_end))
                t = t_end
        cursor = timings[-1].end
    return timings
