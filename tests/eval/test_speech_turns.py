"""Spoken conversations: two turns in one session, and Whisper word times on reply audio."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from kame.audio.io import resample
from kame.audio.tts import create_tts
from kame.frames import FRAME_S, FRAME_SIZE


@pytest.fixture(scope="module")
def piper():
    return create_tts("piper")


def _speech(tts, text):
    speech = tts.synthesize(text)
    return resample(speech.audio, speech.sample_rate, 24000), speech.words


def test_a_second_turn_is_spoken_after_the_first_reply_ends(tiny_frontend, piper):
    from kame.frontend.engine import FrontendEngine
    from kame.runtime.simulate import SimulationConfig, simulate

    first, _ = _speech(piper, "Hello there.")
    second, _ = _speech(piper, "How are you?")
    config = SimulationConfig(max_reply_s=1.0, min_reply_s=0.5, reply_silence_s=0.5)

    async def scenario():
        with FrontendEngine(tiny_frontend, 1, oracle_stream=False) as engine:
            return await simulate(engine, None, [first, second], config)

    result = asyncio.run(scenario())
    first_frames = -(-len(first) // FRAME_SIZE)
    assert result.turn_starts[0] == 0.0
    # the random front-end never falls quiet, so the reply runs to its 1 s cap before turn 2 starts
    second_start = first_frames + int(np.ceil(1.0 / FRAME_S))
    assert result.turn_starts[1] == pytest.approx(second_start * FRAME_S)
    second_frames = -(-len(second) // FRAME_SIZE)
    assert result.frames == second_start + second_frames + int(np.ceil(1.0 / FRAME_S))
    assert len(result.audio) == (result.frames + 1) * FRAME_SIZE == len(result.user_audio)
    at = second_start * FRAME_SIZE
    np.testing.assert_array_equal(result.user_audio[at : at + len(second)], second)
    np.testing.assert_array_equal(result.user_audio[len(first) : at], 0.0)


def test_whisper_times_the_words_of_a_reply(piper):
    from kame.eval.transcript import ReplyTranscriber

    audio, words = _speech(piper, "The capital of France is Paris.")
    reply = np.zeros(int(4.0 * 24000) + len(audio), np.float32)
    reply[int(1.2 * 24000) : int(1.2 * 24000) + len(audio)] = audio
    heard = ReplyTranscriber().words(reply, offset=10.0)
    assert "paris" in " ".join(w.text for w in heard).lower()
    assert heard[0].start == pytest.approx(10.0 + 1.2 + words[0].start, abs=0.3)
    assert heard[-1].end == pytest.approx(10.0 + 1.2 + words[-1].end, abs=0.4)
    assert ReplyTranscriber().words(np.zeros(24000, np.float32)) == []
