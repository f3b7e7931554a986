"""Beyond one synthesized question: recordings with transcripts (Whisper-aligned) and multi-turn dialogues."""

from __future__ import annotations

import json

from data_checks import check_record
from sim_llm import serve_in_thread

from kame.audio.io import write_wav
from kame.audio.tts import create_tts, spoken_words
from kame.data.build import BuildConfig, build
from kame.data.dataset import read_records


def test_recorded_question_is_aligned_with_whisper(tmp_path):
    question = "Which planet is the largest in our solar system?"
    speech = create_tts("espeak").synthesize(question)  # a "recording" from another voice, no word times kept
    write_wav(tmp_path / "clips" / "q0.wav", speech.audio, speech.sample_rate)
    source = tmp_path / "qa.jsonl"
    row = {"question": question, "answer": "Jupiter is the largest planet.", "wav": "clips/q0.wav"}
    source.write_text(json.dumps(row) + "\n")
    out = tmp_path / "out"
    with serve_in_thread() as url:
        config = BuildConfig(
            source=f"jsonl:{source}", out=out, llm=f"openai:sim@{url}", columns="question_audio=wav"
        )
        summary = build(config, progress=False)
    assert summary["written"] == 1, summary
    (record,) = read_records(out)
    user_turn = record.meta["turns"][0]
    assert user_turn["aligned_by"] == "whisper" and user_turn["text"] == question  # never rewritten
    assert record.meta["turns"][1]["aligned_by"] == "tts"
    check_record(record)
    # the recording's word times agree with espeak's own (shifted onto the dialogue clock)
    offset = user_turn["start"]
    gaps = [abs(w["start"] - offset - e.start) for w, e in zip(user_turn["words"], speech.words, strict=True)]
    assert sorted(gaps)[len(gaps) // 2] < 0.2


def test_multi_turn_dialogue(tmp_path):
    messages = [
        {"role": "user", "content": "Hi there, can you help me plan a short trip to the mountains?"},
        {"role": "assistant", "content": "Of course, a weekend in the Alps would be a lovely choice."},
        {"role": "user", "content": "What should I pack for cold nights in a small tent?"},
        {"role": "assistant", "content": "Pack a warm sleeping bag, a wool hat and thick socks."},
    ]
    source = tmp_path / "chat.jsonl"
    source.write_text(json.dumps({"messages": messages}) + "\n")
    out = tmp_path / "out"
    with serve_in_thread() as url:
        config = BuildConfig(
            source=f"jsonl:{source}", out=out, llm=f"openai:sim@{url}", columns="turns=messages"
        )
        assert build(config, progress=False)["written"] == 1
    (record,) = read_records(out)
    meta = record.meta
    turns = meta["turns"]
    assert [t["speaker"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert [t["start"] for t in turns] == sorted(t["start"] for t in turns)
    for earlier, later in zip(turns, turns[1:], strict=False):
        assert later["words"][0]["start"] > earlier["words"][-1]["end"]  # turns do not overlap
    assert meta["user_words"] == turns[0]["words"] + turns[2]["words"]
    for index in (0, 2):
        events = [e for e in meta["oracles"] if e["turn"] == index]
        assert events and events[-1]["level"] == 5
        assert events[-1]["text"] == turns[index + 1]["text"]
        assert all(turns[index]["words"][0]["start"] < e["time"] for e in events)
    assert spoken_words(turns[3]["text"]) == [
        w["word"] for w in meta["assistant_words"][-len(turns[3]["words"]) :]
    ]
