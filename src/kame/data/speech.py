"""Speak a dialogue: each turn through a TTS (or a recording), placed on one clock, in two channels.

The user's turns go to one channel and the assistant's to the other, both 24 kHz mono of the same length
(a whole number of 80 ms Mimi frames). Each turn starts after a pause drawn from the config; word times
come from the TTS (or, when it gives none or the turn is a recording, from Whisper alignment) and are
shifted onto the dialogue clock. Voices and speaking rates are drawn per speaker for variety.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kame.audio.io import resample
from kame.audio.tts import Speech, TTSEngine, WordTiming, spoken_words
from kame.frames import FRAME_SIZE, SAMPLE_RATE


@dataclass
class VoiceConfig:
    """Pauses (seconds) and speaking rates, each drawn uniformly from its range."""

    lead_in: tuple[float, float] = (0.3, 0.8)
    response_gap: tuple[float, float] = (0.2, 0.7)  # user -> assistant
    next_turn_gap: tuple[float, float] = (0.6, 1.2)  # assistant -> user
    tail: float = 0.5
    user_rate: tuple[float, float] = (0.9, 1.15)
    assistant_rate: tuple[float, float] = (0.95, 1.1)


@dataclass
class SpokenTurn:
    speaker: str
    text: str
    start: float
    end: float
    words: list[WordTiming]
    voice: str | None = None
    rate: float = 1.0
    aligned_by: str = "tts"

    def to_json(self) -> dict[str, object]:
        return {
            "speaker": self.speaker,
            "text": self.text,
            "start": round(self.start, 4),
            "end": round(self.end, 4),
            "voice": self.voice,
            "rate": round(self.rate, 4),
            "aligned_by": self.aligned_by,
            "words": [words_json(w) for w in self.words],
        }


def words_json(w: WordTiming) -> dict[str, object]:
    return {"word": w.word, "start": round(w.start, 4), "end": round(w.end, 4)}


@dataclass
class DialogueAudio:
    user: np.ndarray
    assistant: np.ndarray
    turns: list[SpokenTurn] = field(default_factory=list)
    sample_rate: int = SAMPLE_RATE

    @property
    def duration(self) -> float:
        return len(self.user) / self.sample_rate


Aligner = Callable[[np.ndarray, int, str], list[WordTiming]]


def render_dialogue(
    turns: list[tuple[str, str]],
    engines: dict[str, TTSEngine],
    rng: random.Random,
    config: VoiceConfig,
    aligner: Aligner | None = None,
    recordings: dict[int, Speech] | None = None,
) -> DialogueAudio:
    """Speak ``turns`` [(speaker, text)] with ``engines[speaker]`` (``recordings[i]`` replaces turn i's
    synthesis); ``aligner`` times the words of speech that comes without them."""
    voices = {s: rng.choice(engines[s].voices()) for s in ("user", "assistant") if s in engines}
    rates = {"user": rng.uniform(*config.user_rate), "assistant": rng.uniform(*config.assistant_rate)}
    pauses = [rng.uniform(*config.lead_in)] + [
        rng.uniform(*(config.response_gap if speaker == "assistant" else config.next_turn_gap))
        for speaker, _ in turns[1:]
    ]
    clips: list[tuple[str, int, np.ndarray]] = []
    spoken: list[SpokenTurn] = []
    cursor = 0.0
    for index, ((speaker, text), pause) in enumerate(zip(turns, pauses, strict=True)):
        recorded = recordings.get(index) if recordings else None
        speech = recorded or engines[speaker].synthesize(text, voice=voices.get(speaker), rate=rates[speaker])
        words, how = speech.words, ("recording" if recorded else "tts")
        if not words or [w.word for w in words] != spoken_words(text):
            if aligner is None:
                raise ValueError(f"turn {index} has no word times and no aligner was given")
            words, how = aligner(speech.audio, speech.sample_rate, text), "whisper"
        audio = resample(speech.audio, speech.sample_rate, SAMPLE_RATE)
        offset = int(round((cursor + pause) * SAMPLE_RATE))
        start = offset / SAMPLE_RATE
        placed = [WordTiming(w.word, start + w.start, start + w.end) for w in words]
        end = start + len(audio) / SAMPLE_RATE
        clips.append((speaker, offset, audio))
        spoken.append(
            SpokenTurn(speaker, text, start, end, placed, voices.get(speaker), rates[speaker], aligned_by=how)
        )
        # the next turn starts after this one's last word (TTS clips end in some silence)
        cursor = placed[-1].end if placed else end
    total = max(offset + len(audio) for _, offset, audio in clips) + int(config.tail * SAMPLE_RATE)
    total = -(-total // FRAME_SIZE) * FRAME_SIZE
    channels = {"user": np.zeros(total, np.float32), "assistant": np.zeros(total, np.float32)}
    for speaker, offset, audio in clips:
        channels[speaker][offset : offset + len(audio)] += audio
    return DialogueAudio(channels["user"], channels["assistant"], spoken)
