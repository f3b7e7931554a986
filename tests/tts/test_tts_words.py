"""Text words and the phoneme-word alignment that gives Piper its word times."""

from __future__ import annotations

from kame.audio.tts.phoneme_align import SpokenWord, align_words
from kame.audio.tts.words import spoken_words, text_words


def test_text_words_strip_punctuation_keep_apostrophes():
    assert spoken_words("Hello, it's 42 -- France?  U.S. (yes)") == [
        "Hello",
        "it's",
        "42",
        "France",
        "U.S",
        "yes",
    ]
    text = "Well... what's that?"
    for w in text_words(text):
        assert text[w.start : w.end] == w.word


def _spoken(*items: tuple[str, float, float]) -> list[SpokenWord]:
    return [SpokenWord(p, s, e) for p, s, e in items]


def test_one_to_one():
    timings = align_words(["the", "cat"], ["ðə", "kæt"], _spoken(("ðə", 0.0, 0.2), ("kˈæt", 0.3, 0.6)))
    assert [(t.word, t.start, t.end) for t in timings] == [("the", 0.0, 0.2), ("cat", 0.3, 0.6)]


def test_merged_function_words_share_the_span():
    timings = align_words(
        ["one", "of", "the", "cats"],
        ["wˈʌn", "ʌv", "ðə", "kˈæts"],
        _spoken(("wˈʌn", 0.0, 0.3), ("ʌvðə", 0.3, 0.5), ("kˈæts", 0.5, 0.9)),
    )
    assert [t.word for t in timings] == ["one", "of", "the", "cats"]
    of, the = timings[1], timings[2]
    assert of.start == 0.3 and the.end == 0.5 and of.end == the.start and 0.3 < of.end < 0.5


def test_number_spans_several_phoneme_words():
    timings = align_words(
        ["in", "1999"],
        ["ɪn", "nˈaɪntiːnhˈʌndɹɪd nˈaɪnti nˈaɪn"],
        _spoken(
            ("ɪn", 0.0, 0.1), ("nˈaɪntiːnhˈʌndɹɪd", 0.1, 0.8), ("nˈaɪnti", 0.8, 1.1), ("nˈaɪn", 1.1, 1.4)
        ),
    )
    assert [(t.word, t.start, t.end) for t in timings] == [("in", 0.0, 0.1), ("1999", 0.1, 1.4)]


def test_no_speech_gives_none():
    assert align_words(["a"], ["ə"], []) is None
