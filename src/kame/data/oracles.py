"""Simulated oracles (Simulated Oracle Augmentation): when each oracle happens, at which hint level, and
what the simulator LLM says there.

The recipe (REFERENCE.md section 3): an utterance is a run of one speaker's words ending at a silence of
``utterance_gap`` (1.0 s) or more. Every ``interval`` (0.5 s) of the dialogue clock, while a user
utterance is being spoken and at least ``min_heard`` (2) of its words have been heard (a word is heard once
it has ended), the hint level follows r(t) = heard / total words of that utterance:

    level 0: r < 0.50   an unguided guess from the history
    level 1: r < 0.65   only keywords of the ground-truth reply
    level 2: r < 0.80   content that differs from the ground truth
    level 3: r < 0.95   the ground truth's content, not verbatim
    level 4: r < 1      the ground truth, closely
    level 5: r = 1      the ground-truth reply verbatim, no LLM call

Once every word is heard there is exactly one more event, at level 5, so each utterance ends with the
ground truth as its oracle. The event at time t lands at frame ``int(t * frame_rate) + text_delay``.
Levels are computed in integers (heard * 100 against the thresholds), so 19 of 20 words is level 4, not a
rounding accident.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from kame.audio.tts import WordTiming
from kame.backend.llm import LLMProvider
from kame.data.prompts import PromptSet
from kame.data.text import keywords, spoken
from kame.frames import FRAME_RATE

THRESHOLDS_PERCENT = (50, 65, 80, 95)  # r at which levels 1, 2, 3, 4 begin
VERBATIM = 5


def hint_level(heard: int, total: int) -> int:
    """The hint level for ``heard`` of ``total`` words (5 = all heard)."""
    if total <= 0 or not 0 <= heard <= total:
        raise ValueError(f"heard must be within 0..total, got {heard} of {total}")
    if heard == total:
        return VERBATIM
    return sum(heard * 100 >= t * total for t in THRESHOLDS_PERCENT)


def utterances(words: list[WordTiming], gap: float = 1.0) -> list[list[WordTiming]]:
    """Split one speaker's words where the silence between two words is ``gap`` seconds or more."""
    groups: list[list[WordTiming]] = []
    for word in words:
        if groups and word.start - groups[-1][-1].end < gap:
            groups[-1].append(word)
        else:
            groups.append([word])
    return groups


@dataclass(frozen=True)
class EventPlan:
    """An oracle to simulate: when, at which level, and what was heard by then."""

    time: float
    frame: int
    level: int
    heard: int  # words of the current utterance heard at ``time``
    total: int  # words of the current utterance
    turn: int  # index (in the dialogue's turns) of the user turn being spoken
    heard_text: str  # the user's turn as heard so far

    @property
    def ratio(self) -> float:
        return self.heard / self.total


@dataclass(frozen=True)
class SimulatedOracle:
    time: float
    frame: int
    level: int
    ratio: float
    heard: int
    total: int
    turn: int
    text: str

    def to_json(self) -> dict[str, object]:
        return {
            "time": self.time,
            "frame": self.frame,
            "level": self.level,
            "ratio": round(self.ratio, 6),
            "heard": self.heard,
            "total": self.total,
            "turn": self.turn,
            "text": self.text,
        }


@dataclass
class ScheduleConfig:
    interval: float = 0.5
    min_heard: int = 2
    utterance_gap: float = 1.0
    frame_rate: float = FRAME_RATE
    text_delay: int = 0  # frames; moshi's text stream has delay 0


def schedule(user_turns: list[tuple[int, list[WordTiming]]], config: ScheduleConfig) -> list[EventPlan]:
    """The oracle events of a dialogue: ``user_turns`` holds (turn index, the turn's words on the dialogue
    clock) for every user turn that an assistant turn answers."""
    if config.interval <= 0:
        raise ValueError(f"the oracle interval must be positive, got {config.interval}")
    plans: list[EventPlan] = []
    for turn, words in user_turns:
        earlier: list[WordTiming] = []  # words of this turn's previous utterances
        for utterance in utterances(words, config.utterance_gap):
            total = len(utterance)
            needed = min(config.min_heard, total)
            k = int(utterance[0].start // config.interval) + 1
            while True:
                t = round(k * config.interval, 6)
                heard = sum(1 for w in utterance if w.end <= t)
                if heard >= needed:
                    heard_words = earlier + utterance[:heard]
                    plans.append(
                        EventPlan(
                            time=t,
                            frame=int(t * config.frame_rate) + config.text_delay,
                            level=hint_level(heard, total),
                            heard=heard,
                            total=total,
                            turn=turn,
                            heard_text=" ".join(w.word for w in heard_words),
                        )
                    )
                if heard == total:
                    break
                k += 1
            earlier += utterance
    return plans


def history_text(turns: list[tuple[str, str]], upto: int) -> str:
    """The dialogue before turn ``upto`` as ``User: ...`` / ``Assistant: ...`` lines, each ending in a line
    break ("" at the start of a conversation, so prompts can put it right before the heard words)."""
    return "".join(f"{'User' if s == 'user' else 'Assistant'}: {text}\n" for s, text in turns[:upto])


async def simulate(
    plans: list[EventPlan],
    turns: list[tuple[str, str]],
    llm: LLMProvider | None,
    prompts: PromptSet,
    rng: random.Random,
    *,
    temperature: float = 0.7,
    max_tokens: int = 64,
    max_words: int = 30,
    limit: asyncio.Semaphore | None = None,
) -> tuple[list[SimulatedOracle], int]:
    """Write every planned oracle: level 5 is the next assistant turn verbatim; other levels ask ``llm``
    (concurrently, at most ``limit`` at once). Returns the events and how many came back empty (dropped).
    Raises LLMError when the simulator fails; ``llm`` may be None when every plan is at level 5."""
    if llm is None and any(p.level != VERBATIM for p in plans):
        raise ValueError("oracles below level 5 need a simulator LLM")
    hints = [_hint_values(plan, turns, rng) for plan in plans]  # drawn in order: deterministic

    async def write(plan: EventPlan, values: dict[str, str]) -> str:
        if plan.level == VERBATIM:
            return values["reply"]
        messages = prompts[f"oracle_level{plan.level}"].render(**values)
        assert llm is not None  # checked above
        if limit is None:
            raw = await llm.complete(messages, max_tokens=max_tokens, temperature=temperature)
        else:
            async with limit:
                raw = await llm.complete(messages, max_tokens=max_tokens, temperature=temperature)
        return spoken(raw, max_words=max_words, commas_only=True)

    texts = await asyncio.gather(*(write(p, h) for p, h in zip(plans, hints, strict=True)))
    events = [
        SimulatedOracle(p.time, p.frame, p.level, p.ratio, p.heard, p.total, p.turn, text)
        for p, text in zip(plans, texts, strict=True)
        if text.strip(" .,")
    ]
    return events, len(plans) - len(events)


def _hint_values(plan: EventPlan, turns: list[tuple[str, str]], rng: random.Random) -> dict[str, str]:
    reply = turns[plan.turn + 1][1]
    candidates = keywords(reply, limit=8)
    chosen = rng.sample(candidates, k=min(4, len(candidates))) if candidates else []
    return {
        "history": history_text(turns, plan.turn),
        "heard": plan.heard_text,
        "reply": reply,
        "keywords": ", ".join(chosen) or "(none)",
        "ratio": f"{plan.ratio:.0%}",
    }
