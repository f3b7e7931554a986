"""The tandem runtime: sessions, the frame clock and offline simulation, on the tiny checkpoint."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from kame.audio.io import resample
from kame.audio.tts import create_tts
from kame.frames import FRAME_SIZE
from kame.frontend.checkpoint import load_frontend
from kame.frontend.engine import FrontendEngine
from kame.runtime.backend import Backend, BackendSpec
from kame.runtime.scheduler import FrameStepper, SlotState
from kame.runtime.session import Session
from kame.runtime.simulate import SimulationConfig, simulate
from kame.runtime.words import AssistantWords


@pytest.fixture(scope="module")
def spoken_question() -> np.ndarray:
    speech = create_tts("piper").synthesize("What is the capital of France?")
    return resample(speech.audio, speech.sample_rate, 24000)


class Pieces:
    def __init__(self, pieces: dict[int, str]) -> None:
        self.pieces = pieces

    def id_to_piece(self, token: int) -> str:
        return self.pieces[token]


def test_assistant_words_are_whole_words():
    words = AssistantWords(
        Pieces({10: "\u2581The", 11: "\u2581cap", 12: "ital", 13: "\u2581is", 14: "."}), (0, 3), 100
    )
    out = [words.feed(t) for t in (10, 3, 11, 12, 13, 14, 0)]
    assert [piece for piece, _ in out] == [" The", None, " cap", "ital", " is", ".", None]
    assert [w for _, done in out for w in done] == ["The", "capital", "is."]
    assert words.feed(None) == (None, [])


def test_byte_pieces_are_decoded_as_utf8():
    table = {20: "\u2581caf", 21: "<0xC3>", 22: "<0xA9>", 23: "<0xFF>", 24: "\u2581ok", 25: "<0x11>"}
    words = AssistantWords(Pieces(table), (3,), 100)
    out = [words.feed(t) for t in (20, 21, 22, 23, 25, 24, 3)]
    assert [piece for piece, _ in out] == [" caf", None, "é", None, None, " ok", None]
    assert [w for _, done in out for w in done] == ["café", "ok"]


def test_input_buffer_underruns_and_bounded_backlog():
    state = SlotState(sink=None, words=None, max_backlog_s=0.2)  # type: ignore[arg-type]
    silent, underrun, _ = state.take_frame()  # nothing heard yet: silence, not an underrun
    assert not silent.any() and not underrun
    state.push(np.ones(FRAME_SIZE // 2, np.float32))
    partial, underrun, _ = state.take_frame()  # half a frame is not a frame
    assert not partial.any() and underrun
    for _ in range(10):  # 10 x 0.1 s at once: over the 0.2 s bound
        state.push(np.full(2400, 0.5, np.float32))
    frame, underrun, dropped = state.take_frame()
    assert frame.shape == (FRAME_SIZE,) and np.allclose(frame, 0.5) and not underrun
    assert 0.7 <= dropped <= 0.85  # old audio dropped to keep latency bounded


def test_sessions_resample_user_audio_for_the_front_end(tiny_checkpoint):
    async def scenario():
        with FrontendEngine(load_frontend(tiny_checkpoint), 1) as engine:
            stepper = FrameStepper(engine)
            session = Session("s", stepper, None)
            await session.start()
            session.push_audio(np.zeros(16000, np.float32), 16000)  # 1 s at 16 kHz
            frames = [stepper.step_once() for _ in range(14)]
            await asyncio.sleep(0)
            await session.close()
            return frames, session

    frames, session = asyncio.run(scenario())
    underruns = [f[0].underrun for f in frames]
    assert underruns[:12] == [False] * 12 and underruns[-1]  # 1 s = 12.5 frames of 24 kHz audio
    assert session.timeline.audio_t == 1.0 and session.metrics.input_underruns == 2


def test_frame_clock_counts_deadline_misses(tiny_checkpoint):
    async def scenario():
        with FrontendEngine(load_frontend(tiny_checkpoint), 2) as engine:
            stepper = FrameStepper(engine, frame_s=0.0005)  # no step can meet a 0.5 ms deadline
            stepper.start()
            session = Session("s", stepper, None)
            await session.start()
            await asyncio.sleep(0.5)
            await session.close()
            stepper.stop()
            return stepper.stats, session.metrics

    stats, metrics = asyncio.run(scenario())
    assert stats.steps > 3 and stats.late_steps == stats.steps
    assert metrics.frames > 3 and metrics.deadline_misses == metrics.frames


def test_simulation_runs_the_whole_tandem_system(tiny_checkpoint, spoken_question, tmp_path):
    async def scenario():
        backend = Backend.from_spec(BackendSpec())
        await backend.load()
        try:
            with FrontendEngine(load_frontend(tiny_checkpoint), 1) as engine:
                return await simulate(
                    engine, backend, spoken_question, SimulationConfig(max_reply_s=5.0),
                    timeline_path=str(tmp_path / "timeline.jsonl"),
                )  # fmt: skip
        finally:
            await backend.aclose()

    result = asyncio.run(scenario())
    # The timing convention: the last step's audio is heard one frame after its input frame.
    assert len(result.audio) == (result.frames + 1) * FRAME_SIZE == len(result.user_audio)
    assert not result.audio[:FRAME_SIZE].any()
    assert result.frames >= len(spoken_question) / FRAME_SIZE + 3.0 / 0.08 - 1  # the reply's minimum time
    types = [e["type"] for e in result.events]
    for kind in (
        "session_start",
        "partial",
        "final",
        "llm_request",
        "llm_first_token",
        "oracle_reset",
        "oracle_applied",
    ):
        assert kind in types, kind
    assert types[-1] == "session_end"
    times = [e["t"] for e in result.events]
    assert times == sorted(times)  # one clock for every event
    final = next(e for e in result.events if e["type"] == "final")
    assert "capital" in final["text"].lower() and "france" in final["text"].lower()
    applied = [e for e in result.events if e["type"] == "oracle_applied"]
    assert all(a["frame"] <= b["frame"] for a, b in zip(applied, applied[1:], strict=False))
    assert result.words()  # the assistant's words were recorded
    on_disk = [json.loads(line) for line in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    assert [e["type"] for e in on_disk] == types


def test_simulate_cli(tiny_checkpoint, spoken_question, tmp_path):
    import soundfile as sf

    question = tmp_path / "q.wav"
    sf.write(str(question), resample(spoken_question, 24000, 16000), 16000)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_TORCH_COMPILE": "1"}
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "kame", "simulate", str(question), "--frontend", tiny_checkpoint,
         "--no-backend", "--output", str(tmp_path / "a.wav"), "--timeline", str(tmp_path / "t.jsonl"),
         "--stereo", str(tmp_path / "both.wav"), "--max-reply", "2", "--greedy"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert time.time() - started < 60
    audio, rate = sf.read(str(tmp_path / "a.wav"))
    both, _ = sf.read(str(tmp_path / "both.wav"))
    assert rate == 24000 and both.shape == (len(audio), 2)
    assert "frames:" in proc.stdout
    events = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert events[0]["type"] == "session_start" and events[-1]["type"] == "session_end"


def test_the_shipped_default_says_the_adopted_oracle(spoken_question, tmp_path):
    """``kame demo``'s session with ``--frontend tiny``: after the last oracle reaches the front-end, the
    assistant's words are that oracle's (scored independently of the model, from the timeline)."""
    from kame.eval.following import last_oracle_following

    async def scenario():
        backend = Backend.from_spec(BackendSpec())
        await backend.load()
        try:
            with FrontendEngine(load_frontend("tiny"), 1) as engine:
                torch.manual_seed(0)
                return await simulate(engine, backend, spoken_question, SimulationConfig(max_reply_s=8.0))
        finally:
            await backend.aclose()

    result = asyncio.run(scenario())
    scored = last_oracle_following(result.events)
    assert scored["oracle"], "no oracle reached the front-end"
    assert scored["fraction"] >= 0.6, scored
