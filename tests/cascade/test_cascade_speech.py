"""The cascade end to end on real speech (Piper / espeak-ng) with the embedded stack (Whisper tiny.en,
SmolLM2 ``local``, Piper), simulated on the virtual clock exactly as ``kame simulate --pipeline cascade``.

The reply is checked against independent references: the question's own TTS word times (when the user
really stopped), Whisper transcribing the reply audio back (what was said), the timing convention of
``kame.frames`` (where the reply sits in the WAV).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from backend_speech import synthesize, transcribe
from llm_servers import Record, Script, scripted_app, serve

from kame.audio.io import resample
from kame.audio.tts import TTSEngine, TTSError
from kame.backend.llm import create_llm
from kame.backend.stt import create_stt
from kame.backend.stt.wer import normalize
from kame.events import ReplyStart
from kame.frames import FRAME_S, FRAME_SIZE, SAMPLE_RATE
from kame.runtime.cascade.chunks import speakable
from kame.runtime.cascade.pipeline import Cascade, CascadeConfig
from kame.runtime.simulate import Interruption, SimulationConfig, simulate_cascade

LEAD_S = 0.5
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")


def _question(text: str, engine: str = "piper", lead_s: float = LEAD_S) -> tuple[np.ndarray, float]:
    """24 kHz audio of ``text`` after ``lead_s`` of silence, and the second its last word ends."""
    utterance = synthesize(text, engine)
    audio = resample(utterance.audio, utterance.sample_rate, SAMPLE_RATE)
    return np.concatenate([np.zeros(int(lead_s * SAMPLE_RATE), np.float32), audio]), lead_s + utterance.words[
        -1
    ].end


def _of(result, kind: str) -> list[dict]:
    return [e for e in result.events if e["type"] == kind]


def _first_sound(audio: np.ndarray, after_s: float = 0.0, level: float = 1e-3) -> float | None:
    start = int(after_s * SAMPLE_RATE)
    loud = np.flatnonzero(np.abs(audio[start:]) > level)
    return (start + loud[0]) / SAMPLE_RATE if loud.size else None


def _spoken_tokens(text: str) -> list[str]:
    """The tokens of the LLM's text that the voice says (symbols dropped, tokens with a letter or digit)."""
    return [token for token in speakable(text).split() if any(ch.isalnum() for ch in token)]


def _letter_error_rate(reference: str, hypothesis: str) -> float:
    """Edit distance between the two texts' letters (normalised words run together) over the reference's."""
    ref, hyp = "".join(normalize(reference)), "".join(normalize(hypothesis))
    row = list(range(len(hyp) + 1))
    for i, a in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, b in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (a != b))
    return row[-1] / max(1, len(ref))


def test_a_spoken_question_gets_a_spoken_answer(whisper, piper, smollm):
    audio, spoken_end = _question("What is the capital of France?")
    cascade = Cascade(whisper, smollm, piper, CascadeConfig(turn_silence_s=0.6))
    result = asyncio.run(simulate_cascade(cascade, audio))

    [turn] = _of(result, "turn_end")
    assert turn["reason"] == "vad_silence" and turn["silence_s"] == 0.6
    assert "capital" in turn["text"].lower() and "france" in turn["text"].lower()
    assert abs(turn["user_end"] - spoken_end) < 0.15  # the VAD's stop minus its silence: the true end
    [request] = _of(result, "llm_request")
    assert request["reason"] == "turn_end" and request["messages"] == 2  # system + the user's turn
    [start] = _of(result, "reply_start")
    [end] = _of(result, "reply_end")
    assert end["reason"] == "done" and not _of(result, "error")

    # The reply starts after the user's last word, and its stages add up to the response latency.
    assert start["t"] > spoken_end
    assert start["latency"] == pytest.approx(start["t"] - turn["user_end"], abs=2e-3)
    stages = [start[name] for name in ReplyStart.STAGES]
    assert all(value >= 0 for value in stages)
    assert sum(stages) == pytest.approx(start["latency"], abs=2e-3)
    assert start["eou"] >= 0.6 - 0.1  # the turn-end silence is part of the latency, as users feel it
    assert start["playout"] <= FRAME_S + 0.02  # audio goes out on the next tick of the frame clock

    # The WAV follows kame.frames: 24 kHz, the input's clock, at least as long, audio one frame after
    # the tick that played it; nothing before the reply started.
    assert len(result.audio) >= len(audio) and len(result.audio) % FRAME_SIZE == 0
    heard = _first_sound(result.audio)
    assert heard is not None and heard >= spoken_end
    assert start["t"] + FRAME_S - 0.01 <= heard <= start["t"] + FRAME_S + 0.3

    # The words were recorded as they were played, and Whisper hears the LLM's text in the reply audio.
    [done] = _of(result, "llm_done")
    words = _of(result, "assistant_word")
    assert [w["text"] for w in words] == _spoken_tokens(done["text"])
    assert all(start["t"] <= w["t"] <= end["t"] for w in words)
    assert end["text"] == " ".join(_spoken_tokens(done["text"])) and end["words"] == len(words)
    listener = create_stt("whisper", final_min_window_s=30.0)  # finals at full accuracy (0.8 % on Piper)
    transcripts, _, _ = asyncio.run(transcribe(listener, result.audio, SAMPLE_RATE))
    heard_text = " ".join(t.text for t in transcripts if t.kind == "final")
    # Letters, not words: Piper's joe runs "France is" together into what any listener hears as "Francis".
    assert _letter_error_rate(done["text"], heard_text) <= 0.15, (done["text"], heard_text)


def test_silence_gets_no_reply(whisper, piper, smollm):
    rng = np.random.default_rng(0)
    room = (0.002 * rng.standard_normal(int(4 * SAMPLE_RATE))).astype(np.float32)  # a quiet room
    cascade = Cascade(whisper, smollm, piper)
    result = asyncio.run(simulate_cascade(cascade, room, SimulationConfig(min_reply_s=2.0)))
    assert not _of(result, "turn_end") and not _of(result, "llm_request") and not _of(result, "reply_start")
    assert len(result.audio) >= len(room) and not result.audio.any()


@pytest.mark.slow
def test_barge_in_stops_the_reply_and_the_next_answer_responds(whisper, piper, smollm):
    question, _ = _question("Can you tell me a long story about a brave knight and a dragon?")
    interruption, _ = _question("Wait. What is the capital of France?", lead_s=0.0)
    cascade = Cascade(whisper, smollm, piper)
    result = asyncio.run(
        simulate_cascade(cascade, question, interruption=Interruption(interruption, after_s=1.5))
    )
    [barge] = _of(result, "barge_in")
    first_end, *later_ends = _of(result, "reply_end")
    assert barge["playing"] and first_end["reason"] == "barge_in"
    assert first_end["t"] - barge["t"] <= 0.3  # playback stopped within 0.3 s of the recognised word
    assert first_end["dropped_s"] > 0  # there was more to say

    # The output falls silent within 0.3 s of the barge-in (plus the frame in flight), until the next reply.
    starts = _of(result, "reply_start")
    assert len(starts) == 2
    quiet_from = barge["t"] + FRAME_S + 0.3
    next_sound = _first_sound(result.audio, after_s=quiet_from)
    assert next_sound is not None and next_sound >= starts[1]["t"]

    # What was played is the assistant's turn, and the next answer is to the interruption.
    [interrupted, answered] = [e for e in result.events if e["type"] == "assistant_text"]
    played = interrupted["text"].split()
    [first_done, *_] = _of(result, "llm_done")
    assert 0 < len(played) < len(first_done["text"].split())
    assert played == _spoken_tokens(first_done["text"])[: len(played)]
    second_request = _of(result, "llm_request")[-1]
    assert "france" in second_request["text"].lower() and second_request["messages"] == 4
    assert "paris" in answered["text"].lower()
    assert later_ends[-1]["reason"] == "done"


class FailsOnSecondChunk(TTSEngine):
    """The real Piper voice, made to fail from its second chunk on: a TTS error mid-reply on demand."""

    name = "piper-failing"

    def __init__(self, voice: TTSEngine) -> None:
        self.voice = voice
        self.calls = 0

    def synthesize(self, text: str, *, voice: str | None = None, rate: float = 1.0):
        self.calls += 1
        if self.calls == 2:
            raise TTSError("piper: the voice crashed (injected on the second chunk)")
        return self.voice.synthesize(text, voice=voice, rate=rate)


def _two_questions() -> tuple[np.ndarray, float]:
    first, _ = _question("What is the capital of France?")
    second, _ = _question("And what is the capital of Spain?", lead_s=0.0)
    gap = np.zeros(int(6.0 * SAMPLE_RATE), np.float32)
    return np.concatenate([first, gap, second]), len(first) / SAMPLE_RATE + 6.0


ANSWER = ["Paris is the capital of France. ", "It is a lovely city. ", "Many people visit it."]


def test_a_dead_llm_ends_the_reply_with_an_error_and_the_session_goes_on(whisper, piper):
    audio, second_at = _two_questions()
    script = Script(mode="stream", chunks=ANSWER, chunk_delay=0.05, first_modes=["drop"])
    record = Record()

    async def scenario():
        async with serve(scripted_app("openai", script, record)) as url:
            llm = create_llm(f"openai:test@{url}/v1", api_key="test", retries=0, timeout=10.0)
            cascade = Cascade(whisper, llm, piper)
            return await simulate_cascade(cascade, audio)

    result = asyncio.run(scenario())
    errors = _of(result, "error")
    ends = _of(result, "reply_end")
    assert len(_of(result, "llm_request")) == 2 and len(record.requests) == 2
    assert len(errors) == 1 and errors[0]["t"] < second_at and errors[0]["stream"] == 1
    assert [e["reason"] for e in ends] == ["error", "done"]
    second = [e for e in result.events if e["type"] == "reply_start" and e["stream"] == 2]
    assert second and ends[1]["text"] == "".join(ANSWER).strip()


def test_a_tts_error_mid_reply_ends_it_with_an_error_and_the_session_goes_on(whisper, piper):
    audio, second_at = _two_questions()
    script = Script(mode="stream", chunks=ANSWER)
    record = Record()
    voice = FailsOnSecondChunk(piper)

    async def scenario():
        async with serve(scripted_app("openai", script, record)) as url:
            llm = create_llm(f"openai:test@{url}/v1", api_key="test", retries=0, timeout=10.0)
            return await simulate_cascade(Cascade(whisper, llm, voice), audio)

    result = asyncio.run(scenario())
    [error] = _of(result, "error")
    assert error["source"] == "tts" and "crashed" in error["text"] and error["t"] < second_at
    first, second = _of(result, "reply_end")
    assert first["reason"] == "error" and first["text"] == ANSWER[0].strip()  # the first chunk was heard
    assert second["reason"] == "done" and second["text"] == "".join(ANSWER).strip()
