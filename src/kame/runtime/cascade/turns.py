"""When the user's turn ends and when they talk over the reply, from the STT's transcripts.

The turn ends on the STT's final: the Silero VAD heard ``--turn-silence`` of silence (Whisper,
PocketSphinx), or Kyutai STT's pause head predicted the end (a semantic end of turn, as Unmute uses it).
A barge-in needs the VAD *and* a recognised word: the first transcript of a new utterance with at least
``min_words`` words while a reply is under way, so that a cough or the reply's own echo does not cut it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kame.backend.stt.base import Transcript


@dataclass(frozen=True)
class TurnDecision:
    kind: Literal["barge_in", "turn_end"]
    transcript: Transcript


class TurnDetector:
    """Feed every transcript with whether a reply is under way; get what it means (or None)."""

    def __init__(self, min_words: int = 1) -> None:
        if min_words < 1:
            raise ValueError(f"a barge-in needs at least one recognised word, got min_words={min_words}")
        self.min_words = min_words
        self._barged_utterance: int | None = None

    def on_transcript(self, transcript: Transcript, replying: bool) -> list[TurnDecision]:
        out: list[TurnDecision] = []
        words = transcript.word_count
        if replying and words >= self.min_words and self._barged_utterance != transcript.utterance:
            self._barged_utterance = transcript.utterance
            out.append(TurnDecision("barge_in", transcript))
        if transcript.kind == "final" and words:
            out.append(TurnDecision("turn_end", transcript))
        return out
