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
    config = SimulationConfig(max_reply_s=1.0, min_reply_s=0.5, reply_silence_s=5.0)

    async def scenario():
        with FrontendEngine(tiny_frontend, 1, oracle_stream=False) as engine:
            return await simulate(engine, None, [first, second], config)

    result = asyncio.run(scenario())
    first_frames = -(-len(first) // FRAME_SIZE)
    assert result.turn_starts[0] == 0.0
    # 5 s of quiet can never come within the 1 s cap, so each reply runs to its cap
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


def test_audio_transcripts_are_cut_per_turn_and_timed_on_the_conversation_clock(piper):
    from kame.eval.answering import Job, SpokenQuestion, turn_rows
    from kame.eval.questions import Question
    from kame.eval.systems import Conversation
    from kame.eval.transcript import ReplyTranscriber, TimedWord

    first, first_words = _speech(piper, "Plants take in carbon dioxide.")
    second, _ = _speech(piper, "They give off oxygen.")
    reply = np.zeros(int(14.0 * 24000), np.float32)
    reply[int(3.0 * 24000) : int(3.0 * 24000) + len(first)] = first  # turn 1's reply, from 3.0 s
    reply[int(9.5 * 24000) : int(9.5 * 24000) + len(second)] = second  # turn 2 starts at 7.0 s
    question = Question(1, "stem", ("Which gas do plants take in?", "And which do they give off?"))
    spoken = SpokenQuestion(
        [np.zeros(int(2.0 * 24000), np.float32)] * 2,
        [
            [TimedWord("Which", 0.1, 0.3), TimedWord("in", 1.6, 1.9)],
            [TimedWord("And", 0.1, 0.2), TimedWord("off", 1.5, 1.8)],
        ],
    )
    conversation = Conversation(reply, np.zeros_like(reply), [0.0, 7.0], [], [])
    rows = turn_rows(Job("kame", question, 0), spoken, conversation, "audio", ReplyTranscriber(), {}, 1.0)
    assert [r["turn"] for r in rows] == [1, 2]
    assert "carbon" in rows[0]["transcript"].lower() and "oxygen" not in rows[0]["transcript"].lower()
    assert "oxygen" in rows[1]["transcript"].lower()
    assert rows[0]["user_end"] == 1.9 and rows[1]["user_end"] == 8.8  # turn 2's words from its start
    assert rows[0]["latency"] == pytest.approx(3.0 + first_words[0].start - 1.9, abs=0.3)
    assert rows[1]["latency"] == pytest.approx(9.5 - 8.8, abs=0.35)
