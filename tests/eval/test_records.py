"""Latency figures, record files that survive a kill, and the text stream's word times."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kame.eval.latency import latency_stats, response_latency
from kame.eval.store import EvalFolderError, RecordFile, check_settings, whole_groups
from kame.eval.transcript import TextStreamRecorder, words_in


def test_response_latency_is_negative_when_the_system_started_first():
    assert response_latency(2.0, [2.5, 3.0]) == 0.5
    assert response_latency(2.0, [1.25, 3.0]) == -0.75
    assert response_latency(2.0, []) is None


def test_latency_stats():
    stats = latency_stats([-1.0, 0.5, 1.0, 2.0, None])
    assert stats["n"] == 4 and stats["silent"] == 1
    assert stats["median"] == 0.75 and stats["before_user_end"] == 0.25
    assert stats["p90"] == pytest.approx(float(np.percentile([-1.0, 0.5, 1.0, 2.0], 90)), abs=1e-3)
    assert latency_stats([None])["median"] is None


def test_records_cut_short_or_unfinished_are_dropped_and_redone(tmp_path):
    path = tmp_path / "answers.jsonl"
    lines = [
        {"system": "kame", "question_id": 1, "turn": 1},
        {"system": "kame", "question_id": 1, "turn": 2},
        {"system": "kame", "question_id": 2, "turn": 1},  # its turn 2 was never written
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"system": "moshi", "quest')
    records = RecordFile(path)
    kept = records.load(whole_groups(lambda r: (r["system"], r["question_id"]), lambda r: 2))
    assert [(r["question_id"], r["turn"]) for r in kept] == [(1, 1), (1, 2)]
    assert path.read_text().count("\n") == 2  # the file no longer holds what was dropped
    records.append(
        [{"system": "kame", "question_id": 2, "turn": 1}, {"system": "kame", "question_id": 2, "turn": 2}]
    )
    assert (
        len(RecordFile(path).load(whole_groups(lambda r: (r["system"], r["question_id"]), lambda r: 2))) == 4
    )


def test_a_folder_keeps_one_experiment(tmp_path):
    path = tmp_path / "settings.json"
    check_settings(path, {"llm": "local", "runs": 1}, ("llm",))
    check_settings(path, {"llm": "local", "runs": 3}, ("llm",))  # more runs: the same experiment, resumed
    with pytest.raises(EvalFolderError, match="llm='local'"):
        check_settings(path, {"llm": "openai:gpt-4.1", "runs": 3}, ("llm",))


def test_text_stream_words_are_timed_by_the_timing_convention():
    recorder = TextStreamRecorder()
    steps = [None, " The", None, " cap", "ital", None, None, " is", None]
    for piece in steps:
        recorder.on_audio(np.zeros(1920, np.float32))
        if piece:
            recorder.on_text(piece)
    words = recorder.words()
    assert [w.text for w in words] == ["The", "capital", "is"]
    # step s is heard from 80 (s + 1) ms; a word ends one frame after its last piece's step
    assert [(round(w.start, 2), round(w.end, 2)) for w in words] == [(0.16, 0.24), (0.32, 0.48), (0.64, 0.72)]
    assert [w.text for w in words_in(words, 0.3, 0.6)] == ["capital"]


def test_whole_word_pieces_each_make_a_word():
    recorder = TextStreamRecorder(whole_words=True)
    for piece in (None, "Paris", " is", None, None, "Yes"):  # a reply's first word has no leading space
        recorder.on_audio(np.zeros(1920, np.float32))
        if piece:
            recorder.on_text(piece)
    assert [w.text for w in recorder.words()] == ["Paris", "is", "Yes"]
