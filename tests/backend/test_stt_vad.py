"""Silero VAD (ONNX, no torch): utterance starts and ends where the speech does."""

from __future__ import annotations

import numpy as np

from kame.audio.io import resample
from kame.backend.stt.vad import SAMPLE_RATE, SileroVAD, VADConfig


def _events(audio: np.ndarray, chunk: int, config: VADConfig | None = None):
    vad = SileroVAD(config)
    events = []
    for offset in range(0, audio.size, chunk):
        for step in vad.process(audio[offset : offset + chunk]):
            if step.event is not None:
                events.append((step.event.kind, step.event.sample / SAMPLE_RATE))
    return events


def test_silence_and_noise_are_not_speech():
    rng = np.random.default_rng(0)
    assert _events(np.zeros(SAMPLE_RATE * 3, np.float32), 1280) == []
    assert _events((rng.standard_normal(SAMPLE_RATE * 3) * 0.003).astype(np.float32), 1280) == []


def test_utterances_start_and_end_with_the_speech(piper_three):
    audio, rate, utterances, starts = piper_three
    audio16 = resample(audio, rate, SAMPLE_RATE)
    for chunk in (1280, 333):  # 80 ms frames, or odd-sized pieces: same result
        events = _events(audio16, chunk)
        assert [kind for kind, _ in events] == ["start", "end"] * 3
        for index, utterance in enumerate(utterances):
            start, end = events[2 * index][1], events[2 * index + 1][1]
            spoken_start = starts[index] + utterance.words[0].start
            spoken_end = starts[index] + utterance.words[-1].end
            assert abs(start - spoken_start) < 0.2, (start, spoken_start)
            assert -0.2 < end - spoken_end < 0.4, (end, spoken_end)


def test_a_longer_silence_setting_keeps_questions_together(piper_three):
    audio, rate, _, _ = piper_three
    events = _events(resample(audio, rate, SAMPLE_RATE), 1280, VADConfig(min_silence_s=2.0))
    assert [kind for kind, _ in events] == ["start"]  # 1.5 s gaps never end it; the input ends first
