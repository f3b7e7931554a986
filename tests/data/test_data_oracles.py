"""The oracle schedule follows REFERENCE.md section 3 exactly: levels from r(t), event times and frames."""

from __future__ import annotations

import asyncio
import random

import pytest

from kame.audio.tts import WordTiming
from kame.backend.llm import ChatMessage, LLMProvider
from kame.data.oracles import ScheduleConfig, hint_level, schedule, simulate, utterances
from kame.data.prompts import load_prompts


@pytest.mark.parametrize(
    ("heard", "total", "level"),
    [
        (0, 10, 0),
        (4, 10, 0),
        (5, 10, 1),
        (13, 20, 2),
        (64, 100, 1),
        (65, 100, 2),
        (79, 100, 2),
        (8, 10, 3),
        (94, 100, 3),
        (19, 20, 4),
        (99, 100, 4),
        (10, 10, 5),
        (1, 1, 5),
    ],
)
def test_hint_levels_follow_r(heard, total, level):
    assert hint_level(heard, total) == level


def _words(times: list[tuple[float, float]]) -> list[WordTiming]:
    return [WordTiming(f"w{i}", s, e) for i, (s, e) in enumerate(times)]


def test_utterances_split_at_one_second_of_silence():
    words = _words([(0.0, 0.3), (0.4, 0.7), (1.69, 2.0), (3.0, 3.2)])
    assert [len(u) for u in utterances(words, gap=1.0)] == [3, 1]


def test_schedule_levels_times_and_frames():
    # ten words, one every 0.3 s from 0.4 s: ends at 0.6, 0.9, ..., 3.3
    words = _words([(0.4 + 0.3 * i - 0.05, 0.6 + 0.3 * i) for i in range(10)])
    plans = schedule([(0, words)], ScheduleConfig())
    assert [p.time for p in plans] == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    for plan in plans:
        heard = sum(w.end <= plan.time for w in words)
        assert plan.heard == heard and plan.total == 10
        assert plan.level == hint_level(heard, 10)
        assert plan.frame == int(plan.time * 12.5)
        assert plan.heard >= 2
    # heard at 1.0 .. 3.5 s: 2, 4, 5, 7, 9, 10 of 10 words
    assert [p.level for p in plans] == [0, 0, 1, 2, 3, 5]
    assert plans[-1].level == 5 and sum(p.level == 5 for p in plans) == 1
    assert plans[-1].heard_text == " ".join(w.word for w in words)


def test_second_utterance_gets_its_own_levels():
    first = _words([(0.1, 0.3), (0.35, 0.6), (0.65, 0.9)])
    second = [WordTiming(f"x{i}", 2.5 + 0.3 * i, 2.7 + 0.3 * i) for i in range(4)]
    plans = schedule([(0, first + second)], ScheduleConfig())
    # first utterance: 0.5 s hears 1 word (< 2), 1.0 s all 3: one level-5 event
    # second (ends 2.7, 3.0, 3.3, 3.6): 3.0 s hears 2 of 4, 3.5 s 3 of 4, 4.0 s all
    assert [(p.time, p.heard, p.total, p.level) for p in plans] == [
        (1.0, 3, 3, 5),
        (3.0, 2, 4, 1),
        (3.5, 3, 4, 2),
        (4.0, 4, 4, 5),
    ]
    assert plans[1].heard_text.startswith("w0 w1 w2 x0")  # earlier utterances count as heard


def test_min_heard_and_interval_are_configurable():
    words = _words([(0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8)])
    plans = schedule([(0, words)], ScheduleConfig(interval=0.25, min_heard=3))
    assert [(p.time, p.heard) for p in plans] == [(0.75, 3), (1.0, 4)]
    assert [p.frame for p in plans] == [9, 12]


class RecordingLLM(LLMProvider):
    """A scripted simulator that records its prompts (the policy under test is ours, not the LLM's)."""

    name = "scripted"

    def __init__(self) -> None:
        self.prompts: list[list[ChatMessage]] = []

    async def stream_chat(self, messages, *, max_tokens=96, temperature=0.3):
        self.prompts.append(messages)
        yield f"guess {len(self.prompts)}, with a comma; and symbols #!"


def test_simulate_level5_is_verbatim_and_prompts_match_levels():
    words = _words([(0.4 + 0.3 * i - 0.05, 0.6 + 0.3 * i) for i in range(10)])
    plans = schedule([(0, words)], ScheduleConfig())
    turns = [("user", "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"), ("assistant", "The truth, exactly as written: 42!")]
    llm = RecordingLLM()
    events, empty = asyncio.run(simulate(plans, turns, llm, load_prompts(), random.Random(0)))
    assert empty == 0 and len(events) == len(plans)
    assert events[-1].level == 5 and events[-1].text == turns[1][1]
    assert len(llm.prompts) == len(plans) - 1  # no call for level 5
    for event in events[:-1]:
        assert event.text.startswith("guess") and "#" not in event.text and ";" not in event.text
    everything = ["\n".join(m.content for m in messages) for messages in llm.prompts]
    levels = [p.level for p in plans[:-1]]
    for level, prompt in zip(levels, everything, strict=True):
        if level == 0:  # an unguided guess: nothing of the ground truth
            assert "truth" not in prompt.lower() and "42" not in prompt
        elif level == 1:  # keywords only, never the reply itself
            assert "exactly as written" not in prompt and "known to you:" in prompt
        else:  # levels 2-4 see the reply
            assert "The truth, exactly as written: 42!" in prompt
