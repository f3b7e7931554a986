"""The timeline: generic events with session time and user-audio time, JSON Lines, observers."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from kame.timeline import Timeline, VirtualClock, read_jsonl


def test_events_carry_time_audio_time_session_type_and_text(tmp_path):
    clock = VirtualClock(100.0)
    path = tmp_path / "t.jsonl"
    timeline = Timeline("s1", clock=clock, path=path)
    timeline.record("session_start", mode="restart")
    clock.advance(0.08)
    timeline.add_audio(0.08)
    clock.advance(0.5)
    event = timeline.record("partial", "what is", words=[["what", 0.1, 0.3]], covered=np.float32(0.58))
    timeline.record("frame", step=np.int64(3))
    timeline.close()

    assert event == {
        "t": pytest.approx(0.58),
        "audio_t": pytest.approx(0.08),
        "session": "s1",
        "type": "partial",
        "text": "what is",
        "words": [["what", 0.1, 0.3]],
        "covered": pytest.approx(0.58),
    }
    lines = path.read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["session_start", "audio", "partial", "frame"]
    assert "text" not in json.loads(lines[0])  # only where there is one
    assert read_jsonl(path)[3]["step"] == 3  # numpy numbers are written as numbers
    assert [e["type"] for e in timeline.of_type("partial", "frame")] == ["partial", "frame"]


def test_reserved_fields_and_bad_audio_are_refused():
    timeline = Timeline("s")
    with pytest.raises(ValueError, match="set by the timeline"):
        timeline.record("x", t=1.0)
    with pytest.raises(ValueError, match="finite number"):
        timeline.add_audio(-1)
    with pytest.raises(ValueError, match="cannot go back"):
        VirtualClock(2.0).set(1.0)


def test_observers_see_every_event_and_a_failing_one_is_contained():
    timeline = Timeline("s", keep=2)
    seen = []
    unsubscribe = timeline.subscribe(seen.append)

    def broken(event):
        raise RuntimeError("observer bug")

    timeline.subscribe(broken)
    for index in range(3):
        timeline.record("tick", index=index)
    unsubscribe()
    timeline.record("tick", index=3)
    assert [e["index"] for e in seen] == [0, 1, 2]
    assert timeline.observer_errors == 4
    assert [e["index"] for e in timeline.events] == [2, 3]  # keep=2 bounds memory
    assert timeline.count == 4


def test_threads_can_record_at_once(tmp_path):
    timeline = Timeline("s", path=tmp_path / "t.jsonl")

    def worker(name):
        for index in range(200):
            timeline.record("step", source=name, index=index)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    timeline.close()
    events = read_jsonl(tmp_path / "t.jsonl")
    assert len(events) == 800
    times = [e["t"] for e in events]
    assert times == sorted(times)


def test_malformed_files_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"t": 0, "type": "a"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_jsonl(path)
