"""The cascade: streaming STT ends the user's turn, the LLM answers, the TTS speaks it chunk by chunk.

``Cascade`` holds what sessions share (the STT engine, the LLM provider, the reply voice);
``CascadeSession`` is one conversation with the same surface as the KAME ``Session`` (``start``,
``push_audio``, ``close``, a timeline, metrics, an output). Its reply audio leaves one 80 ms frame per
``tick`` of the frame clock (the server's ticker, or the simulation's loop), so the session always knows
what has been played: words are recorded as ``assistant_word`` when their audio goes out, and a
barge-in keeps exactly the words played as the assistant's turn in the history.

Everything a session does runs on its event loop; LLM streaming and synthesis run as tasks (synthesis
in a worker thread), and a failure of either ends that reply with an ``error`` event, never the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kame.audio.io import resample, to_mono
from kame.audio.tts import TTSEngine, TTSError, WordTiming, text_words
from kame.backend.llm import ChatMessage, LLMError, LLMProvider
from kame.backend.prompts import CASCADE_SYSTEM_PROMPT, load_prompt
from kame.backend.stt.base import STTEngine, STTError, STTStream, Transcript
from kame.errors import UserError
from kame.events import (
    CASCADE_REASON,
    AssistantSaid,
    AssistantText,
    AssistantWord,
    BargeIn,
    Error,
    Final,
    LiveEvent,
    LLMDone,
    LLMFirstToken,
    LLMRequest,
    Partial,
    ReplyEnd,
    ReplyStart,
    ReplyText,
    SessionEnd,
    SessionStart,
    TimelineEvent,
    TTSFirstAudio,
    TTSRequest,
    TurnEnd,
)
from kame.frames import FRAME_S, SAMPLE_RATE
from kame.runtime.cascade.chunks import ChunkerConfig, SpeakableChunker
from kame.runtime.cascade.player import ReplyPlayer
from kame.runtime.cascade.turns import TurnDetector
from kame.timeline import Clock, Timeline

logger = logging.getLogger(__name__)

DEFAULT_TURN_SILENCE_S = 0.6  # Unmute's pause threshold sits in the field's 0.5-0.8 s range


class CascadeConfigError(UserError, ValueError):
    """A cascade setting that cannot work; the message says which and what to use."""


@dataclass
class CascadeConfig:
    turn_silence_s: float = DEFAULT_TURN_SILENCE_S  # VAD silence that ends the user's turn
    system_prompt_file: str | None = None  # None: the packaged cascade prompt
    max_history_messages: int = 16
    max_tokens: int = 80
    temperature: float = 0.3
    barge_in_words: int = 1  # recognised words (with the VAD's speech) that interrupt a reply
    tts_rate: float = 1.0
    chunker: ChunkerConfig = field(default_factory=ChunkerConfig)

    def __post_init__(self) -> None:
        if not 0.1 <= self.turn_silence_s <= 5.0:
            raise CascadeConfigError(f"--turn-silence must be 0.1-5 s, got {self.turn_silence_s}")
        if self.max_tokens < 1 or self.max_history_messages < 0 or self.barge_in_words < 1:
            raise CascadeConfigError("max_tokens and barge_in_words must be >= 1, max_history_messages >= 0")

    def load_system_prompt(self) -> str:
        return load_prompt(self.system_prompt_file, default=CASCADE_SYSTEM_PROMPT)


class Cascade:
    """The shared parts: one STT engine, one LLM provider, one reply voice, any number of sessions."""

    def __init__(self, stt: STTEngine, llm: LLMProvider, tts: TTSEngine, config: CascadeConfig | None = None):
        self.stt = stt
        self.llm = llm
        self.tts = tts
        self.config = config or CascadeConfig()
        self.system_prompt = self.config.load_system_prompt()  # a bad file fails here, not mid-session

    async def load(self) -> None:
        """Load the models now (and warm the LLM and the voice) rather than on the first reply."""
        await self.stt.load()
        try:
            await self.llm.complete([ChatMessage("user", "Say OK.")], max_tokens=1)
        except LLMError as exc:
            logger.warning("the LLM did not answer a warm-up request: %s (replies will keep trying)", exc)
        try:
            await asyncio.to_thread(self.tts.synthesize, "Hello.")
        except TTSError as exc:
            logger.warning("the reply voice failed a warm-up: %s", exc)

    def open_session(self, session_id: str, **kwargs: Any) -> CascadeSession:
        return CascadeSession(session_id, self, **kwargs)

    async def aclose(self) -> None:
        await self.llm.aclose()
        await self.stt.aclose()


@dataclass
class CascadeMetrics:
    """Per-session counters; ``snapshot`` is what clients and /metrics see."""

    frames: int = 0
    late_frames: int = 0  # ticks of the live clock that came over a frame late
    replies: int = 0
    barge_ins: int = 0
    errors: int = 0
    assistant_words: int = 0
    underruns: int = 0  # frames silent mid-reply, waiting for the TTS
    latency_s: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    llm_ttft_s: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    tts_ttfb_s: deque[float] = field(default_factory=lambda: deque(maxlen=100))

    def snapshot(self) -> dict[str, Any]:
        def median_ms(values: deque[float]) -> float | None:
            return round(float(np.median(list(values))) * 1e3, 1) if values else None

        return {
            "pipeline": "cascade",
            "frames": self.frames,
            "late_frames": self.late_frames,
            "replies": self.replies,
            "barge_ins": self.barge_ins,
            "errors": self.errors,
            "assistant_words": self.assistant_words,
            "reply_underruns": self.underruns,
            "response_latency_ms": median_ms(self.latency_s),
            "llm_ttft_ms": median_ms(self.llm_ttft_s),
            "tts_ttfb_ms": median_ms(self.tts_ttfb_s),
        }


@dataclass
class _Reply:
    """One answer to one turn, from the LLM request until its last audio is played (or it is cut)."""

    id: int
    user_end: float  # session time the user really stopped (their last word's end)
    turn_end: float
    chunks: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    llm_task: asyncio.Task[None] | None = None
    tts_task: asyncio.Task[None] | None = None
    marks: dict[str, float] = field(default_factory=dict)  # stage boundaries (session time)
    text: str = ""  # what the LLM wrote
    played: list[str] = field(default_factory=list)
    error: str | None = None
    synthesis_done: bool = False  # every chunk is queued in the player (or the reply failed)

    def cancel(self) -> None:
        for task in (self.llm_task, self.tts_task):
            if task is not None and not task.done():
                task.cancel()


class CascadeSession:
    """Create, ``await start()``, ``push_audio`` as it arrives, ``tick`` every 80 ms, ``await close()``."""

    pipeline = "cascade"

    def __init__(
        self,
        session_id: str,
        cascade: Cascade,
        *,
        output: Any = None,
        clock: Clock | None = None,
        timeline_path: str | None = None,
    ) -> None:
        from kame.runtime.session import NullOutput

        self.id = session_id
        self.cascade = cascade
        self.config = cascade.config
        self.output = output or NullOutput()
        self.timeline = Timeline(session_id, path=timeline_path, **({"clock": clock} if clock else {}))
        self.metrics = CascadeMetrics()
        self.player = ReplyPlayer()
        self.turns = TurnDetector(self.config.barge_in_words)
        self.history: list[ChatMessage] = []
        self.reply: _Reply | None = None
        self.stream: STTStream | None = None
        self.keep_audio = False
        self.audio_out: list[np.ndarray] = []  # one frame per tick when ``keep_audio`` (simulation)
        self._reply_ids = 0
        self._user_words, self._covered = 0, 0.0  # of the turn being answered (its LLM request's)
        self._received: deque[tuple[float, float]] = deque(maxlen=4000)  # (audio second, session time)
        self._feeder: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self, *, paced: bool = False) -> None:
        """Open the STT stream; ``paced``: tick by the wall clock on this loop (a live client)."""
        stream = await asyncio.to_thread(self.cascade.stt.open_stream, self.id)
        with contextlib.suppress(STTError):  # engines that end turns themselves keep their own rule
            stream.set_end_silence(self.config.turn_silence_s)
        await stream.start()
        self.stream = stream
        self._feeder = asyncio.create_task(self._feed(stream), name=f"kame-cascade-stt-{self.id}")
        self.timeline.emit(
            SessionStart(
                details={
                    "pipeline": "cascade", "stt": self.cascade.stt.name, "llm": self.cascade.llm.name,
                    "tts": self.cascade.tts.name, "turn_end": stream.turn_end_reason,
                    "turn_silence_s": stream.end_silence_s,
                }
            )
        )  # fmt: skip
        if paced:
            self._ticker = asyncio.create_task(
                self._tick_by_wall_clock(), name=f"kame-cascade-clock-{self.id}"
            )

    async def close(self, reason: str = "closed") -> None:
        if self._closed:
            return
        if self.reply is not None:
            self._end_reply("closed")
        self._closed = True
        for task in (self._ticker, self._feeder):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.stream is not None:
            try:
                await self.stream.aclose()
            except Exception:  # noqa: BLE001 - closing must finish whatever the STT does
                logger.exception("cascade session %s: closing the STT stream failed", self.id)
        self.timeline.emit(SessionEnd(details={"reason": reason, **self.metrics.snapshot()}))
        self.timeline.close()

    def busy(self) -> bool:
        """Work is pending: audio not decoded yet, or a reply still being written or synthesised."""
        if self.stream is not None and self.stream.backlog_s > 0.0:
            return True
        reply = self.reply
        return reply is not None and not reply.synthesis_done

    # -- user audio ---------------------------------------------------------------------------------
    def push_audio(self, pcm: np.ndarray, sample_rate: int) -> None:
        if self._closed or self.stream is None:
            return
        pcm = to_mono(pcm)
        if not np.all(np.isfinite(pcm)):
            from kame.audio.io import AudioFormatError

            raise AudioFormatError("audio contains NaN or infinite samples")
        self.stream.push(pcm, sample_rate)
        audio_t = self.timeline.add_audio(len(pcm) / sample_rate, record=False)
        self._received.append((audio_t, self.timeline.now()))

    # -- the frame clock ----------------------------------------------------------------------------
    def tick(self) -> np.ndarray:
        """One 80 ms frame out: the reply's next samples (or silence); records what got played."""
        self.metrics.frames += 1
        frame = self.player.next_frame()
        reply = self.reply
        if reply is not None:
            if frame.audio and "reply_start" not in reply.marks:
                self._reply_started(reply)
            elif not frame.audio and "reply_start" in reply.marks and not reply.synthesis_done:
                self.metrics.underruns += 1
            for word in frame.words:
                self._said(reply, word)
        self.output.on_audio(frame.pcm)
        if self.keep_audio:
            self.audio_out.append(frame.pcm)
        if reply is not None and reply.synthesis_done and not self.player.has_audio:
            self._end_reply("error" if reply.error else "done")
        return frame.pcm

    async def _tick_by_wall_clock(self) -> None:
        loop = asyncio.get_running_loop()
        start, count = loop.time(), 0
        while not self._closed:
            count += 1
            delay = start + count * FRAME_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -FRAME_S:
                self.metrics.late_frames += 1
                if delay < -1.0:  # the loop stalled: do not burst a second of frames to catch up
                    start, count = loop.time(), 0
            self.tick()

    # -- transcripts --------------------------------------------------------------------------------
    async def _feed(self, stream: STTStream) -> None:
        try:
            async for transcript in stream.transcripts():
                self._on_transcript(transcript)
        except STTError as exc:
            self._error(str(exc), "stt")

    def _on_transcript(self, transcript: Transcript) -> None:
        kind = Final if transcript.kind == "final" else Partial
        self._emit(
            kind(
                text=transcript.text, utterance=transcript.utterance,
                words=[[w.text, w.start, w.end] for w in transcript.words],
                covered=round(transcript.audio_t, 3), stable=transcript.stable,
                compute_s=round(transcript.compute_s, 4),
            )
        )  # fmt: skip
        for decision in self.turns.on_transcript(transcript, replying=self.reply is not None):
            if decision.kind == "barge_in" and self.reply is not None:
                self._barge_in(transcript)
            elif decision.kind == "turn_end":
                self._turn_end(transcript)

    def _barge_in(self, transcript: Transcript) -> None:
        reply = self.reply
        assert reply is not None
        self.metrics.barge_ins += 1
        playing = "reply_start" in reply.marks
        first = transcript.words[0] if transcript.words else None
        self._emit(
            BargeIn(
                text=transcript.text, stream=reply.id, playing=playing, utterance=transcript.utterance,
                word_start=first.start if first else None, played_words=len(reply.played),
            )
        )  # fmt: skip
        self._end_reply("barge_in")

    def _turn_end(self, transcript: Transcript) -> None:
        now = self.timeline.now()
        stream = self.stream
        silence = stream.end_silence_s if stream is not None else None
        reason = stream.turn_end_reason if stream is not None else "final"
        user_end = self._session_time(self._speech_end(transcript, silence))
        self._emit(
            TurnEnd(
                text=transcript.text, reason=reason, silence_s=silence, user_end=round(user_end, 3),
                utterance=transcript.utterance,
            )
        )  # fmt: skip
        self._user_words, self._covered = transcript.word_count, transcript.audio_t
        if self.history and self.history[-1].role == "user":  # nothing was said in between: one turn
            merged = f"{self.history[-1].content} {transcript.text.strip()}"
            self.history[-1] = ChatMessage("user", merged)
        else:
            self.history.append(ChatMessage("user", transcript.text.strip()))
        self._start_reply(user_end, now)

    @staticmethod
    def _speech_end(transcript: Transcript, silence: float | None) -> float:
        """Audio second the user really stopped (Pipecat's rule: the VAD's stop minus its confirmation
        silence). Whisper stretches a last word's end into the silence after it, so where the VAD heard
        the silence begin wins over a later word end; a pause head's turns keep the word times."""
        word_end = transcript.words[-1].end if transcript.words else None
        vad_end = transcript.audio_t - silence if silence is not None else None
        candidates = [t for t in (word_end, vad_end) if t is not None]
        return min(candidates) if candidates else transcript.audio_t

    def _session_time(self, audio_s: float) -> float:
        """Session time the user said audio second ``audio_s``: the push that brought it, less the audio
        after it in that push (pushes carry audio already spoken)."""
        for audio_t, t in self._received:
            if audio_t >= audio_s:
                return t - (audio_t - audio_s)
        return self.timeline.now() - max(0.0, self.timeline.audio_t - audio_s)

    # -- replies ------------------------------------------------------------------------------------
    def _start_reply(self, user_end: float, turn_end: float) -> None:
        self._reply_ids += 1
        self.metrics.replies += 1
        reply = _Reply(
            self._reply_ids, user_end, turn_end, marks={"user_end": user_end, "turn_end": turn_end}
        )
        self.reply = reply
        self.player.reset()
        messages = self._messages()
        reply.llm_task = asyncio.create_task(
            self._write(reply, messages), name=f"kame-cascade-llm-{reply.id}"
        )
        reply.tts_task = asyncio.create_task(self._speak(reply), name=f"kame-cascade-tts-{reply.id}")

    def _messages(self) -> list[ChatMessage]:
        history = (
            self.history[-self.config.max_history_messages :] if self.config.max_history_messages else []
        )
        while history and history[0].role != "user":
            history = history[1:]
        return [ChatMessage("system", self.cascade.system_prompt), *history]

    async def _write(self, reply: _Reply, messages: list[ChatMessage]) -> None:
        """Stream the LLM's answer into speakable chunks for ``_speak``."""
        llm = self.cascade.llm
        chunker = SpeakableChunker(self.config.chunker)
        reply.marks["llm_request"] = self.timeline.now()
        self._emit(
            LLMRequest(
                text=messages[-1].content, stream=reply.id, reason=CASCADE_REASON,
                user_words=self._user_words, covered=round(self._covered, 3), messages=len(messages),
            )
        )  # fmt: skip
        try:
            async for piece in llm.stream_chat(
                messages, max_tokens=self.config.max_tokens, temperature=self.config.temperature
            ):
                if not piece:
                    continue
                if "llm_first_token" not in reply.marks:
                    now = reply.marks["llm_first_token"] = self.timeline.now()
                    ttft = now - reply.marks["llm_request"]
                    self.metrics.llm_ttft_s.append(ttft)
                    self._emit(
                        LLMFirstToken(
                            text=piece, stream=reply.id, ttft=round(ttft, 4), covered=round(self._covered, 3),
                            reason=CASCADE_REASON,
                        )
                    )  # fmt: skip
                reply.text += piece
                self._client(ReplyText(text=reply.text, t=round(self.timeline.now(), 3)))
                for chunk in chunker.feed(piece):
                    reply.chunks.put_nowait(chunk)
            for chunk in chunker.flush():
                reply.chunks.put_nowait(chunk)
            duration = round(self.timeline.now() - reply.marks["llm_request"], 4)
            self._emit(LLMDone(text=reply.text, stream=reply.id, chunks=chunker.chunks, duration=duration))
        except LLMError as exc:
            self._reply_failed(reply, str(exc), exc.provider)
        except Exception as exc:  # noqa: BLE001 - a provider bug ends this reply, not the session
            logger.exception("cascade session %s: the LLM stream failed", self.id)
            self._reply_failed(reply, f"{type(exc).__name__}: {exc}", getattr(llm, "name", "llm"))
        finally:
            reply.chunks.put_nowait(None)

    async def _speak(self, reply: _Reply) -> None:
        """Synthesise each chunk as it comes and queue it for the frame clock."""
        tts = self.cascade.tts
        index = 0
        try:
            while (chunk := await reply.chunks.get()) is not None:
                if reply.error:
                    break
                now = self.timeline.now()
                reply.marks.setdefault("first_chunk", now)
                self._emit(TTSRequest(text=chunk, stream=reply.id, chunk=index))
                speech = await asyncio.to_thread(tts.synthesize, chunk, rate=self.config.tts_rate)
                if self.reply is not reply:
                    return  # cut while synthesising
                audio = resample(speech.audio, speech.sample_rate, SAMPLE_RATE)
                if "tts_first_audio" not in reply.marks:
                    done = reply.marks["tts_first_audio"] = self.timeline.now()
                    self.metrics.tts_ttfb_s.append(done - now)
                    self._emit(
                        TTSFirstAudio(
                            text=chunk, stream=reply.id, ttfb=round(done - now, 4),
                            duration=round(len(audio) / SAMPLE_RATE, 3),
                        )
                    )  # fmt: skip
                self.player.enqueue(audio, _labelled_words(chunk, speech.words, len(audio) / SAMPLE_RATE))
                index += 1
        except TTSError as exc:
            self._reply_failed(reply, str(exc), "tts")
        except Exception as exc:  # noqa: BLE001 - an engine bug ends this reply, not the session
            logger.exception("cascade session %s: synthesis failed", self.id)
            self._reply_failed(reply, f"{type(exc).__name__}: {exc}", "tts")
        finally:
            reply.synthesis_done = True

    def _reply_failed(self, reply: _Reply, message: str, source: str) -> None:
        """The reply stops where it is (what was synthesised still plays); the session goes on."""
        if reply.error is not None:
            return
        reply.error = message
        self._error(message, source, stream=reply.id)
        if reply.llm_task is not None and reply.llm_task is not asyncio.current_task():
            reply.llm_task.cancel()

    def _reply_started(self, reply: _Reply) -> None:
        now = reply.marks["reply_start"] = self.timeline.now()
        latency = now - reply.user_end
        self.metrics.latency_s.append(latency)
        self._emit(ReplyStart(stream=reply.id, latency=round(latency, 4), **self._stages(reply)))

    def _stages(self, reply: _Reply) -> dict[str, float]:
        """Where the response latency went; consecutive boundaries, so the stages add up to it."""
        order = ("user_end", "turn_end", "llm_request", "llm_first_token", "first_chunk", "tts_first_audio")
        names = ReplyStart.STAGES
        marks = [reply.marks[key] for key in (*order, "reply_start")]
        return {name: round(b - a, 4) for name, a, b in zip(names, marks, marks[1:], strict=False)}

    def _said(self, reply: _Reply, word: str) -> None:
        reply.played.append(word)
        self.metrics.assistant_words += 1
        self.timeline.emit(AssistantWord(text=word))
        self.output.on_text(("" if len(reply.played) == 1 else " ") + word)
        self.output.on_event(AssistantSaid(text=word, t=round(self.timeline.now(), 3)))

    def _end_reply(self, reason: str) -> None:
        reply = self.reply
        if reply is None:
            return
        self.reply = None
        reply.cancel()
        dropped = self.player.stop()
        played = " ".join(reply.played)
        self._emit(
            ReplyEnd(
                text=played or None, stream=reply.id, reason=reason, words=len(reply.played),
                played_s=round(self.player.played_samples / SAMPLE_RATE, 3),
                dropped_s=round(dropped / SAMPLE_RATE, 3), started="reply_start" in reply.marks,
            )
        )  # fmt: skip
        if played:
            self.history.append(ChatMessage("assistant", played))
            self.timeline.emit(AssistantText(text=played))

    # -- the timeline -------------------------------------------------------------------------------
    def _error(self, message: str, source: str, stream: int | None = None) -> None:
        self.metrics.errors += 1
        logger.warning("cascade session %s: %s error: %s", self.id, source, message)
        self._emit(Error(text=message, stream=stream, source=source))

    def _emit(self, event: TimelineEvent) -> None:
        """Record ``event``; the live ones go to the client too (0x04)."""
        record = self.timeline.emit(event)
        if event.LIVE:
            self._client(LiveEvent(record))

    def _client(self, message: ReplyText | LiveEvent) -> None:
        if not self._closed:
            self.output.on_event(message)


def _labelled_words(text: str, words: list[WordTiming], duration: float) -> list[WordTiming]:
    """The TTS's word times, each labelled with the text's whole token (punctuation and quotes kept: what
    the history gets).

    An engine that could not align the text gives no times: words are then spread over the audio in
    proportion to their length (the best guess of when each is heard).
    """
    spans = text_words(text)
    tokens = [text[_token_start(text, s.start) : _token_end(text, s.end)] for s in spans]
    if len(words) == len(spans):
        return [WordTiming(token, w.start, w.end) for token, w in zip(tokens, words, strict=True)]
    total = sum(len(t) for t in tokens) or 1
    out, position = [], 0.0
    for token in tokens:
        length = duration * len(token) / total
        out.append(WordTiming(token, position, position + length))
        position += length
    return out


def _token_start(text: str, start: int) -> int:
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return start


def _token_end(text: str, end: int) -> int:
    while end < len(text) and not text[end].isspace():
        end += 1
    return end
