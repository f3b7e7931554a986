"""Every event the system records or sends, declared once: one typed class each.

Three families, all public (users' scripts, clients and the evaluation read them; README, "Timeline
format" and "The server"):

- **timeline events** (``TimelineEvent``): one JSON Lines record each, written by a session's timeline
  as ``{"t", "audio_t", "session", "type", "text"?, **fields}``;
- **wire events** (``WireEvent``): the 0x04 JSON messages a client that asks for ``?events=1`` gets;
  some timeline events are forwarded there as they happen (their ``LIVE`` flag);
- **the 0x05 error** (``SessionError``): why the server ends a session.

Producers build these classes, never a type name as a string; observers subscribe by class. A new kind
of event (a cascade stage, an evaluation figure) is one new class here, documented in the README.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

# -- timeline events ----------------------------------------------------------------------------------

TIMELINE_EVENTS: dict[str, type[TimelineEvent]] = {}


@dataclass(frozen=True, kw_only=True)
class TimelineEvent:
    """One thing that happened in a session; ``text`` is written only where there is one."""

    TYPE: ClassVar[str] = ""
    LIVE: ClassVar[bool] = False  # forwarded to clients as a 0x04 event
    text: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TYPE:
            if cls.TYPE in TIMELINE_EVENTS:
                raise TypeError(f"timeline event type {cls.TYPE!r} is declared twice")
            TIMELINE_EVENTS[cls.TYPE] = cls

    def fields(self) -> dict[str, Any]:
        """The event's own fields (everything but ``text``), in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "text"}


@dataclass(frozen=True, kw_only=True)
class _Details(TimelineEvent):
    """An event whose fields are a run's settings or totals (they differ between commands)."""

    details: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        return dict(self.details)


@dataclass(frozen=True, kw_only=True)
class SessionStart(_Details):
    TYPE = "session_start"


@dataclass(frozen=True, kw_only=True)
class SessionEnd(_Details):
    TYPE = "session_end"


@dataclass(frozen=True, kw_only=True)
class AudioReceived(TimelineEvent):
    TYPE = "audio"
    duration: float  # seconds of user audio in the chunk


@dataclass(frozen=True, kw_only=True)
class _TranscriptEvent(TimelineEvent):
    LIVE = True
    utterance: int
    words: list[list[Any]]  # [text, start, end] in session audio seconds
    covered: float  # audio the recognizer had heard
    stable: int
    compute_s: float


@dataclass(frozen=True, kw_only=True)
class Partial(_TranscriptEvent):
    TYPE = "partial"


@dataclass(frozen=True, kw_only=True)
class Final(_TranscriptEvent):
    TYPE = "final"


@dataclass(frozen=True, kw_only=True)
class TranscriptDropped(TimelineEvent):
    TYPE = "transcript_dropped"
    kind: str  # the transcript's kind (partial or final)


@dataclass(frozen=True, kw_only=True)
class LLMRequest(TimelineEvent):
    TYPE = "llm_request"
    stream: int
    reason: str  # words, final or idle
    user_words: int
    covered: float
    messages: int


@dataclass(frozen=True, kw_only=True)
class LLMFirstToken(TimelineEvent):
    TYPE = "llm_first_token"
    stream: int
    ttft: float  # seconds
    covered: float
    reason: str | None = None  # the cascade's: turn_end (the oracle engine's requests leave it out)

    def fields(self) -> dict[str, Any]:
        fields = super().fields()
        if fields["reason"] is None:
            del fields["reason"]
        return fields


@dataclass(frozen=True, kw_only=True)
class LLMDone(TimelineEvent):
    TYPE = "llm_done"
    stream: int
    chunks: int
    duration: float


@dataclass(frozen=True, kw_only=True)
class LLMTruncated(TimelineEvent):
    TYPE = "llm_truncated"
    stream: int
    max_words: int | None


@dataclass(frozen=True, kw_only=True)
class LLMRoute(TimelineEvent):
    TYPE = "llm_route"  # ``text``: the category chosen (None: none fit); once per user turn
    llm: str  # the spec of the back-end the turn's requests go to
    user_words: int  # words of the partial transcript when it was classified


@dataclass(frozen=True, kw_only=True)
class _OracleSent(TimelineEvent):
    LIVE = True
    stream: int
    covered: float


@dataclass(frozen=True, kw_only=True)
class OracleReset(_OracleSent):
    TYPE = "oracle_reset"


@dataclass(frozen=True, kw_only=True)
class OracleAppend(_OracleSent):
    TYPE = "oracle_append"


@dataclass(frozen=True, kw_only=True)
class OracleEnd(_OracleSent):
    TYPE = "oracle_end"  # ``text`` is the whole answer


# The timeline event of each oracle operation kind the back-end sends.
ORACLE_SENT: dict[str, type[_OracleSent]] = {"reset": OracleReset, "append": OracleAppend, "end": OracleEnd}


@dataclass(frozen=True, kw_only=True)
class OracleCancel(TimelineEvent):
    TYPE = "oracle_cancel"
    LIVE = True
    stream: int
    reason: str  # restart, superseded, stale or closed
    had_tokens: bool


@dataclass(frozen=True, kw_only=True)
class OracleApplied(TimelineEvent):
    TYPE = "oracle_applied"
    kind: str
    stream: int
    frame: int  # the front-end step that first saw it
    lag: float  # seconds from the back-end
    late_tokens: int


@dataclass(frozen=True, kw_only=True)
class AssistantWord(TimelineEvent):
    TYPE = "assistant_word"  # ``text``: a word from the front-end's text stream


@dataclass(frozen=True, kw_only=True)
class AssistantText(TimelineEvent):
    TYPE = "assistant_text"  # ``text``: the same words as the back-end's history received them


@dataclass(frozen=True, kw_only=True)
class Error(TimelineEvent):
    TYPE = "error"
    LIVE = True
    stream: int | None
    source: str  # the provider, stt, sink or engine
    retryable: bool = False


ORACLE_TIMELINE_EVENTS: tuple[type[TimelineEvent], ...] = (OracleReset, OracleAppend, OracleEnd, OracleCancel)


# -- the cascade's stages (Unmute's load test and Pipecat's observers name them so) ---------------------
# A reply's life: TurnEnd, LLMRequest and LLMFirstToken (reason "turn_end"), TTSRequest, TTSFirstAudio,
# ReplyStart (its first audio played), AssistantWord per word played, ReplyEnd; BargeIn cuts it short.

CASCADE_REASON = "turn_end"  # the ``reason`` of the cascade's LLMRequest and LLMFirstToken


@dataclass(frozen=True, kw_only=True)
class TurnEnd(TimelineEvent):
    TYPE = "turn_end"
    LIVE = True
    reason: str  # vad_silence (the VAD's silence) or pause_head (Kyutai STT's semantic end of turn)
    silence_s: float | None  # the silence waited, where silence ends the turn
    user_end: float  # session time the user stopped: the VAD's stop minus its confirmation silence
    utterance: int


@dataclass(frozen=True, kw_only=True)
class TTSRequest(TimelineEvent):
    TYPE = "tts_request"  # ``text``: the speakable chunk sent to the voice
    stream: int
    chunk: int


@dataclass(frozen=True, kw_only=True)
class TTSFirstAudio(TimelineEvent):
    TYPE = "tts_first_audio"
    LIVE = True
    stream: int
    ttfb: float  # seconds the voice took on the first chunk
    duration: float  # seconds of audio it made


@dataclass(frozen=True, kw_only=True)
class ReplyStart(TimelineEvent):
    """The reply's first audio played. ``latency``: that moment minus ``TurnEnd.user_end``; the stages
    (``STAGES``, consecutive boundaries) add up to it."""

    TYPE = "reply_start"
    LIVE = True
    STAGES: ClassVar[tuple[str, ...]] = (
        "eou",
        "llm_request",
        "llm_ttft",
        "first_chunk",
        "tts_ttfb",
        "playout",
    )
    stream: int
    latency: float
    eou: float  # the user stopped -> turn_end (turn-end silence + the final's decode)
    llm_request: float  # turn_end -> llm_request
    llm_ttft: float  # llm_request -> llm_first_token
    first_chunk: float  # first token -> first speakable chunk
    tts_ttfb: float  # tts_request -> tts_first_audio
    playout: float  # tts_first_audio -> the tick that played it


@dataclass(frozen=True, kw_only=True)
class ReplyEnd(TimelineEvent):
    TYPE = "reply_end"  # ``text``: what was played
    LIVE = True
    stream: int
    reason: str  # done, barge_in, error or closed
    words: int  # words played
    played_s: float
    dropped_s: float  # synthesised audio never played
    started: bool


@dataclass(frozen=True, kw_only=True)
class BargeIn(TimelineEvent):
    TYPE = "barge_in"  # ``text``: the transcript that interrupted
    LIVE = True
    stream: int  # the reply interrupted
    playing: bool  # its audio had started
    utterance: int
    word_start: float | None
    played_words: int


def is_a(event: dict[str, Any], *classes: type[TimelineEvent]) -> bool:
    """Whether a recorded event (a timeline dict) is of one of ``classes``."""
    return event.get("type") in {cls.TYPE for cls in classes}


# -- wire events (0x04) -------------------------------------------------------------------------------

WIRE_EVENTS: dict[str, type[WireEvent]] = {}


@dataclass(frozen=True, kw_only=True)
class WireEvent:
    """A 0x04 JSON message: ``{"type": TYPE, **fields}``."""

    TYPE: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TYPE:
            if cls.TYPE in WIRE_EVENTS:
                raise TypeError(f"wire event type {cls.TYPE!r} is declared twice")
            WIRE_EVENTS[cls.TYPE] = cls

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}


@dataclass(frozen=True, kw_only=True)
class SessionReady(WireEvent):
    TYPE = "session"
    session: str
    sample_rate: int
    frame_ms: int
    pipeline: str = "kame"  # what this session talks to: kame or cascade
    pipelines: list[str] = field(default_factory=lambda: ["kame"])  # what the server offers


@dataclass(frozen=True, kw_only=True)
class Queued(WireEvent):
    TYPE = "queued"
    position: int  # 1: next to get a slot


@dataclass(frozen=True, kw_only=True)
class AssistantSaid(WireEvent):
    TYPE = "assistant"
    text: str
    t: float


@dataclass(frozen=True, kw_only=True)
class ShuttingDown(WireEvent):
    TYPE = "shutdown"
    drain_s: float  # the server is draining: the session may run this much longer


@dataclass(frozen=True, kw_only=True)
class ReplyText(WireEvent):
    TYPE = "reply_text"  # the cascade's LLM answer so far, as it streams
    text: str
    t: float


@dataclass(frozen=True, kw_only=True)
class MetricsUpdate(WireEvent):
    TYPE = "metrics"
    values: dict[str, Any]  # the session's counters (``SessionMetrics.snapshot``)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, **self.values}


# What a live timeline event carries on the wire, besides the current oracle text of oracle events.
LIVE_FIELDS = ("type", "t", "text", "stream", "source", "reason", "latency")


@dataclass(frozen=True)
class LiveEvent:
    """A recorded timeline event forwarded to the client (``TimelineEvent.LIVE``), with the oracle text."""

    event: dict[str, Any]
    oracle: str | None = None

    def to_json(self) -> dict[str, Any]:
        message = {k: self.event[k] for k in LIVE_FIELDS if k in self.event}
        if self.oracle is not None:
            message["oracle"] = self.oracle
        return message


def live_events() -> tuple[type[TimelineEvent], ...]:
    """The timeline events forwarded to clients as they happen."""
    return tuple(cls for cls in TIMELINE_EVENTS.values() if cls.LIVE)


def live_types() -> tuple[str, ...]:
    return tuple(cls.TYPE for cls in live_events())


def wire_types() -> tuple[str, ...]:
    """Every ``type`` a client can receive in a 0x04 message."""
    return (*WIRE_EVENTS, *live_types())


# -- the 0x05 error -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionError:
    """Why the server ends a session (sent as a 0x05 message right before the close)."""

    message: str
