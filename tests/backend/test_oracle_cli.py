"""``kame oracle``: a recording through STT and the local LLM, printed and written as a timeline."""

from __future__ import annotations

import pytest
from backend_speech import QUESTIONS, conversation

from kame.audio.io import write_wav
from kame.cli import main
from kame.timeline import read_jsonl


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory):
    audio, rate, utterances, starts = conversation(QUESTIONS[:1], "piper", lead_s=0.3, tail_s=0.3)
    path = write_wav(tmp_path_factory.mktemp("wav") / "q.wav", audio, rate)
    return path, utterances[0], starts[0]


def test_fast_run_prints_transcript_and_oracles_and_writes_the_timeline(question_wav, tmp_path, capsys):
    path, utterance, start = question_wav
    timeline_path = tmp_path / "tl.jsonl"
    assert main(["oracle", str(path), "--fast", "--timeline", str(timeline_path)]) == 0
    printed = capsys.readouterr().out
    assert "user   ~ " in printed and "user   = " in printed and "oracle #" in printed
    assert "transcript: What is the capital of France" in printed
    events = read_jsonl(timeline_path)
    types = [e["type"] for e in events]
    assert types[0] == "session_start" and types[-1] == "session_end"
    needed = ("audio", "partial", "final", "llm_request", "llm_first_token", "oracle_reset", "oracle_end")
    assert set(needed) <= set(types), set(needed) - set(types)
    for event in events:
        assert {"t", "audio_t", "session", "type"} <= set(event)
        assert event["session"] == "oracle"
    audio_times = [e["audio_t"] for e in events]
    assert audio_times == sorted(audio_times)
    assert events[-1]["audio_t"] == pytest.approx(utterance.duration + 0.6 + 1.0, abs=0.1)  # + the --tail
    # Partials came before the question was over (oracles may not: --fast outpaces the LLM).
    speech_end = start + utterance.duration
    assert any(e["type"] == "partial" and e["covered"] < speech_end for e in events)


def test_bad_input_is_a_clear_error(question_wav, tmp_path, capsys):
    timeline = str(tmp_path / "t.jsonl")
    assert main(["oracle", str(tmp_path / "missing.wav"), "--timeline", timeline]) == 2
    assert "no such audio file" in capsys.readouterr().err
    assert main(["oracle", str(question_wav[0]), "--stt", "nope", "--timeline", timeline]) == 2
    assert "unknown STT engine 'nope'" in capsys.readouterr().err


@pytest.mark.slow  # real time, and its oracle timing needs the LLM's first token within ~2 s (an idle CPU)
def test_real_time_oracles_arrive_while_the_question_is_spoken(question_wav, tmp_path):
    path, utterance, start = question_wav
    timeline_path = tmp_path / "tl.jsonl"
    assert main(["oracle", str(path), "--realtime", "--quiet", "--timeline", str(timeline_path)]) == 0
    events = read_jsonl(timeline_path)
    speech_end = start + utterance.duration
    audio = [e for e in events if e["type"] == "audio"]
    # Real-time pacing: session time follows the audio.
    assert all(abs(e["t"] - e["audio_t"] - (audio[0]["t"] - audio[0]["audio_t"])) < 1.0 for e in audio)
    partials = [e for e in events if e["type"] == "partial" and e["audio_t"] < speech_end]
    assert len(partials) >= 3 and len(partials[-1]["text"].split()) > len(partials[0]["text"].split())
    early = [e for e in events if e["type"] == "oracle_reset" and e["audio_t"] < speech_end]
    assert early, [(e["type"], e["audio_t"], e.get("text")) for e in events if e["type"] != "audio"]
    assert [e for e in events if e["type"] == "oracle_end"]
