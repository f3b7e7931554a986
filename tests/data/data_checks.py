"""What every built record must satisfy (REFERENCE.md section 3 and issue 5), and the small Q&A set."""

from __future__ import annotations

import numpy as np

QA = [
    {"question": "What is the capital of France?", "answer": "The capital of France is Paris."},
    {"question": "How many legs does a spider have?", "answer": "A spider has eight legs."},
    {
        "question": "Which planet is the largest in our solar system?",
        "answer": "Jupiter is the largest planet.",
    },
    {"question": "What do bees make from the nectar of flowers?", "answer": "Bees make honey from nectar."},
    {
        "question": "What is the boiling point of water at sea level?",
        "answer": "Water boils at one hundred degrees.",
    },
    {"question": "Who wrote the play Romeo and Juliet?", "answer": "William Shakespeare wrote it."},
]


def check_record(record) -> None:  # type: ignore[no-untyped-def]
    """Everything REFERENCE.md section 3 and the issue ask of one built record."""
    from kame.audio.tts import spoken_words
    from kame.data.oracles import hint_level, utterances

    meta = record.meta
    rate = meta["sample_rate"]
    assert rate == 24000 and record.user.shape == record.assistant.shape
    assert len(record.user) % 1920 == 0 and abs(len(record.user) / rate - meta["duration"]) < 1e-3
    assert np.abs(record.user).max() > 0.05 and np.abs(record.assistant).max() > 0.05
    for key in ("id", "question", "answer", "user_words", "oracles"):
        assert key in meta
    # word times: the text's words, in order, non-overlapping, inside the audio, on the right channel
    for speaker, channel in (("user", record.user), ("assistant", record.assistant)):
        for turn in (t for t in meta["turns"] if t["speaker"] == speaker):
            words = turn["words"]
            assert [w["word"] for w in words] == spoken_words(turn["text"])
            previous = 0.0
            for w in words:
                assert previous - 1e-6 <= w["start"] <= w["end"] <= meta["duration"]
                previous = w["end"]
            segment = channel[int(words[0]["start"] * rate) : int(words[-1]["end"] * rate)]
            assert np.sqrt(np.mean(segment**2)) > 0.01, f"{speaker} words fall on silence"
    assert meta["user_words"] == [w for t in meta["turns"] if t["speaker"] == "user" for w in t["words"]]
    assert meta["turns"][0]["text"] == meta["question"] and meta["turns"][1]["text"] == meta["answer"]
    # oracle events: every 0.5 s, level from r(t) of the current utterance, frame int(t * 12.5)
    from kame.audio.tts import WordTiming

    user = [WordTiming(w["word"], w["start"], w["end"]) for w in meta["user_words"]]
    groups = utterances(user, gap=1.0)
    events = meta["oracles"]
    assert events, "no oracle events"
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    for event in events:
        t = event["time"]
        assert abs(t / 0.5 - round(t / 0.5)) < 1e-9
        assert event["frame"] == int(t * 12.5)
        group = [g for g in groups if g[0].start < t][-1]  # the utterance being spoken at t
        heard = sum(w.end <= t for w in group)
        assert (event["heard"], event["total"]) == (heard, len(group))
        assert heard >= min(2, len(group))
        assert event["level"] == hint_level(heard, len(group))
        assert event["text"].strip()
    assert events[-1]["level"] == 5 and events[-1]["text"] == meta["answer"]
    assert all(e["text"] == meta["answer"] for e in events if e["level"] == 5)
    assert sum(e["level"] == 5 for e in events) == len(groups)
