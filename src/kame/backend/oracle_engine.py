"""The oracle engine: turns a growing transcript into a live stream of candidate answers (oracles).

Three parts, one job each: the ``Conversation`` (turns, history, what the assistant actually said),
the policy (``oracle_policy``: a pure function from state and time to a decision), and this module's
``OracleEngine``, the stream runner: it feeds transcripts to the conversation, asks the policy, runs
the LLM calls, cancels them and emits the events.

While the user speaks, the engine keeps asking the LLM again with what has been heard so far, and
streams each answer to the front-end as oracle events: ``reset`` when a newer answer takes over (with
its first text), ``append`` for the rest, ``end`` when it is complete. Answers to stale transcripts are
cancelled so the LLM works on the newest one. When to ask follows the released KAME policy (ask when
the user said ``min_new_words`` more words or an utterance ended, at most ``max_restarts`` starts per
``restart_window_s``), either restarting (one stream at a time) or in parallel (several streams, the
first newer one to produce a token is adopted and older ones cancelled). Decisions are taken on each
transcript by default; ``poll_interval_s = 0.5`` reproduces the released polling. One deliberate change:
in restart mode, new words do not cancel an answer still waiting for its first token (for at most
``first_token_grace_s``); with a slow LLM the released rule cancels every answer before it says
anything, so the front-end gets no oracle until the user stops (measured with bench/backend.py).

The LLM sees the conversation: the user's turns and what the assistant actually said (the runtime
reports the assistant's words with ``add_assistant_text``). One engine serves one session and lives on
the session's event loop; nothing here blocks it, and an LLM failure is recorded on the timeline and
in ``stats``/``last_error`` without ever raising into the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from kame.backend import oracle_policy
from kame.backend.answer_text import cap_words, clean_chunk
from kame.backend.conversation import Conversation, PromptFormat
from kame.backend.llm.base import ChatMessage, LLMError, LLMProvider
from kame.backend.oracle_policy import OraclePolicy, PolicyState, RunningStream
from kame.backend.prompts import load_prompt
from kame.backend.stt.base import STTError, STTStream, Transcript
from kame.events import (
    ORACLE_SENT,
    AssistantText,
    Error,
    Final,
    LLMDone,
    LLMFirstToken,
    LLMRequest,
    LLMTruncated,
    OracleCancel,
    Partial,
    TranscriptDropped,
)
from kame.oracle import OracleKind, OracleOp, OracleSink
from kame.queues import DropOldest
from kame.timeline import Timeline

__all__ = ["OracleConfig", "OracleEngine", "OraclePolicy", "OracleStats"]

logger = logging.getLogger(__name__)


@dataclass
class OracleConfig:
    policy: OraclePolicy = field(default_factory=OraclePolicy)
    system_prompt: str | None = None  # the prompt itself; None: ``system_prompt_file`` or the default
    system_prompt_file: str | None = None
    prompt_format: PromptFormat = "chat"  # turns as chat roles, or one transcript
    max_history_messages: int = 16  # earlier conversation kept in the prompt
    max_tokens: int = 64
    temperature: float = 0.3
    max_words: int | None = 40  # an answer is cut (and its stream stopped) after this many words
    speakable_only: bool = True  # drop markdown and other symbols that cannot be spoken
    max_queued_transcripts: int = 32  # transcripts waiting for the engine; the oldest partial drops

    def __post_init__(self) -> None:
        if self.prompt_format not in ("chat", "transcript"):
            raise ValueError(f"prompt_format must be 'chat' or 'transcript', got {self.prompt_format!r}")
        if self.max_tokens < 1 or self.max_queued_transcripts < 1 or self.max_history_messages < 0:
            raise ValueError("max_tokens and max_queued_transcripts must be >= 1, max_history_messages >= 0")
        if self.max_words is not None and self.max_words < 1:
            raise ValueError(f"max_words must be >= 1 or None, got {self.max_words}")

    def load_system_prompt(self) -> str:
        if self.system_prompt is not None:
            if not self.system_prompt.strip():
                raise ValueError("the system prompt is empty")
            return self.system_prompt.strip()
        return load_prompt(Path(self.system_prompt_file) if self.system_prompt_file else None)


@dataclass
class OracleStats:
    transcripts: int = 0
    dropped_transcripts: int = 0
    requests: int = 0
    first_tokens: int = 0
    adopted: int = 0
    completed: int = 0  # answers that ran to their end
    truncated: int = 0  # answers cut at ``max_words``
    cancelled: int = 0
    errors: int = 0
    sink_errors: int = 0
    events: int = 0


@dataclass
class _Stream:
    id: int
    task: asyncio.Task[None] | None
    started: float  # session time
    user_text: str
    user_words: int
    covered: float  # seconds of user audio the transcript behind it had heard
    reason: str
    text: str = ""
    chunks: int = 0
    first_token: float | None = None
    adopted: bool = False
    done: bool = False


class OracleEngine:
    """One session's oracle engine. Create, ``await start()``, feed transcripts, ``await aclose()``."""

    def __init__(
        self,
        llm: LLMProvider,
        sink: OracleSink | None = None,
        *,
        config: OracleConfig | None = None,
        timeline: Timeline | None = None,
        session: str | None = None,
    ) -> None:
        self.llm = llm
        self.config = config or OracleConfig()
        self.policy = self.config.policy
        self.system_prompt = self.config.load_system_prompt()
        self.timeline = timeline if timeline is not None else Timeline(session or "session", keep=10_000)
        self.session = session or self.timeline.session
        self._sink: OracleSink | None = sink
        self.stats = OracleStats()
        self.last_error: str | None = None
        self.conversation_state = Conversation()
        self._words_at_start = 0  # user words when the last stream started
        self._finals_since_start = 0
        self._queue: DropOldest[Transcript] = DropOldest(
            self.config.max_queued_transcripts, lambda t: t.kind == "partial"
        )
        self._changed: asyncio.Event | None = None
        self._decider: asyncio.Task[None] | None = None
        self._streams: dict[int, _Stream] = {}
        self._next_id = 0
        self._adopted_id = -1  # the stream whose text the front-end is reading
        self._starts: deque[float] = deque()
        self._blocked_until = 0.0  # error backoff
        self._oracle_text = ""
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._decider is not None:
            return
        self._changed = asyncio.Event()
        self._decider = asyncio.create_task(self._decide_loop(), name=f"kame-oracle-{self.session}")

    async def aclose(self) -> None:
        """Cancel every stream and stop deciding."""
        self._closed = True
        for stream in list(self._streams.values()):
            self._cancel(stream, "closed")
        tasks = [s.task for s in self._streams.values() if s.task is not None]
        if self._decider is not None:
            self._decider.cancel()
            tasks.append(self._decider)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._streams.clear()

    def set_sink(self, sink: OracleSink | None) -> None:
        self._sink = sink

    # -- inputs -------------------------------------------------------------------------------------
    def on_transcript(self, transcript: Transcript) -> None:
        """A partial or final from the STT (call on the event loop; returns at once)."""
        if self._changed is None:
            raise RuntimeError("call `await engine.start()` before feeding transcripts")
        event = Final if transcript.kind == "final" else Partial
        self.timeline.emit(
            event(
                text=transcript.text,
                utterance=transcript.utterance,
                words=[[w.text, w.start, w.end] for w in transcript.words],
                covered=round(transcript.audio_t, 3),
                stable=transcript.stable,
                compute_s=round(transcript.compute_s, 4),
            )
        )
        self.stats.transcripts += 1
        victim = self._queue.push(transcript)
        if victim is not None:
            self.stats.dropped_transcripts += 1
            self.timeline.emit(TranscriptDropped(text=victim.text, kind=victim.kind))
        self._changed.set()

    def add_assistant_text(self, text: str) -> None:
        """Words the assistant actually said (the front-end's text), in order, as they are spoken."""
        if not text or not text.strip():
            return
        self.timeline.emit(AssistantText(text=text))
        self.conversation_state.add_assistant_text(text)

    async def run(self, stream: STTStream) -> None:
        """Feed every transcript of ``stream`` until it ends; an STT failure is recorded, not raised."""
        try:
            async for transcript in stream.transcripts():
                self.on_transcript(transcript)
        except STTError as exc:
            self._record_error(None, str(exc), "stt")

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no transcript is queued and no answer is streaming; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.busy:
            if deadline is not None and loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    # -- state --------------------------------------------------------------------------------------
    @property
    def user_words(self) -> int:
        return self.conversation_state.user_words

    @property
    def current_oracle(self) -> str:
        """The text of the oracle the front-end is reading now."""
        return self._oracle_text

    @property
    def busy(self) -> bool:
        """Work is pending: transcripts not absorbed, an answer streaming, or a request due."""
        return bool(self._queue) or self.running_streams > 0 or self._pending_trigger() is not None

    def wake(self) -> None:
        """Re-evaluate the policy now (call after moving a virtual clock: rate limits may have expired)."""
        self._wake()

    @property
    def running_streams(self) -> int:
        return sum(1 for s in self._streams.values() if not s.done)

    def conversation(self) -> list[ChatMessage]:
        """The messages the next request would send."""
        return self._messages()

    # -- deciding -----------------------------------------------------------------------------------
    async def _decide_loop(self) -> None:
        if self._changed is None:
            return
        loop = asyncio.get_running_loop()
        poll = self.policy.poll_interval_s
        next_poll = loop.time() + (poll or 0.0)
        while not self._closed:
            wake_in = oracle_policy.next_wakeup(self.policy, self._policy_state(), self.timeline.now())
            if poll is not None:
                wake_in = max(0.0, next_poll - loop.time()) if wake_in is None else min(wake_in, poll)
            try:
                if wake_in is None:
                    await self._changed.wait()
                else:
                    await asyncio.wait_for(self._changed.wait(), timeout=max(wake_in, 0.001))
            except TimeoutError:
                pass
            self._changed.clear()
            self._absorb()
            if poll is not None:
                if loop.time() < next_poll:
                    continue
                next_poll = loop.time() + poll
            try:
                self._maybe_start()
            except Exception as exc:  # noqa: BLE001 - the engine must keep running
                logger.exception("oracle engine: deciding failed")
                self._record_error(None, f"deciding failed: {type(exc).__name__}: {exc}", "engine")

    def _absorb(self) -> None:
        """Apply queued transcripts to the conversation."""
        while self._queue:
            if self.conversation_state.hear(self._queue.popleft()):
                self._finals_since_start += 1

    def _policy_state(self) -> PolicyState:
        running = tuple(
            RunningStream(s.id, s.started, s.first_token is not None)
            for s in self._streams.values()
            if not s.done
        )
        return PolicyState(
            has_user_text=bool(self.conversation_state.user_text()),
            new_words=self.user_words - self._words_at_start,
            finals_since_start=self._finals_since_start,
            running=running,
            starts=tuple(self._starts),
            blocked_until=self._blocked_until,
        )

    def _pending_trigger(self) -> str | None:
        return oracle_policy.trigger(self.policy, self._policy_state())

    def _maybe_start(self) -> None:
        if self._closed or self._pending_trigger() is None:
            return
        now = self.timeline.now()
        while self._starts and self._starts[0] <= now - self.policy.restart_window_s:
            self._starts.popleft()
        decision = oracle_policy.decide(self.policy, self._policy_state(), now)
        if decision.action == "wait" or decision.reason is None:
            return
        for stream_id in decision.cancel:
            self._cancel(self._streams[stream_id], "restart")
        self._start(decision.reason, now)

    def _start(self, reason: str, now: float) -> None:
        stream = _Stream(
            id=self._next_id,
            task=None,
            started=now,
            user_text=self.conversation_state.user_text(),
            user_words=self.user_words,
            covered=self.conversation_state.covered,
            reason=reason,
        )
        self._next_id += 1
        self._starts.append(now)
        self._words_at_start = self.user_words
        self._finals_since_start = 0
        self._streams[stream.id] = stream
        self.stats.requests += 1
        messages = self._messages()
        self.timeline.emit(
            LLMRequest(
                text=stream.user_text,
                stream=stream.id,
                reason=reason,
                user_words=stream.user_words,
                covered=round(stream.covered, 3),
                messages=len(messages),
            )
        )
        stream.task = asyncio.create_task(self._run_stream(stream, messages), name=f"kame-llm-{stream.id}")
        self._forget_finished()

    def _forget_finished(self) -> None:
        """Keep only running streams and the adopted one."""
        for stream_id in [i for i, s in self._streams.items() if s.done and i != self._adopted_id]:
            del self._streams[stream_id]

    def _messages(self) -> list[ChatMessage]:
        config = self.config
        return self.conversation_state.messages(
            self.system_prompt, config.prompt_format, config.max_history_messages
        )

    # -- streaming ----------------------------------------------------------------------------------
    async def _run_stream(self, stream: _Stream, messages: list[ChatMessage]) -> None:
        chunks = self.llm.stream_chat(
            messages, max_tokens=self.config.max_tokens, temperature=self.config.temperature
        )
        try:
            async for raw in chunks:
                if stream.done:
                    break
                text = clean_chunk(raw, first=not stream.text, speakable_only=self.config.speakable_only)
                if not text:
                    continue
                if stream.first_token is None:
                    stream.first_token = self.timeline.now()
                    self.stats.first_tokens += 1
                    self.timeline.emit(
                        LLMFirstToken(
                            text=text,
                            stream=stream.id,
                            ttft=round(stream.first_token - stream.started, 4),
                            covered=round(stream.covered, 3),
                        )
                    )
                    if not self._adopt(stream):
                        return
                    self._wake()  # a restart may have waited for this first token
                text, cut = cap_words(stream.text, text, self.config.max_words)
                if text:
                    stream.text += text
                    stream.chunks += 1
                    self._emit("reset" if stream.chunks == 1 else "append", text, stream)
                if cut:
                    self.stats.truncated += 1
                    self.timeline.emit(LLMTruncated(stream=stream.id, max_words=self.config.max_words))
                    break
            if not stream.done:
                self._finish(stream)
        except asyncio.CancelledError:
            stream.done = True
            raise
        except LLMError as exc:
            self._fail(stream, str(exc), exc.provider, exc.retryable)
        except Exception as exc:  # noqa: BLE001 - a provider bug must not take the session down
            logger.exception("oracle engine: LLM stream %d failed", stream.id)
            self._fail(stream, f"{type(exc).__name__}: {exc}", self.llm.name, False)
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]

    def _adopt(self, stream: _Stream) -> bool:
        """A stream produced its first token: it takes over if it is newer than the current oracle."""
        running = tuple(s.id for s in self._streams.values() if not s.done)
        adoption = oracle_policy.adopt(stream.id, self._adopted_id, running)
        if not adoption.adopt:
            self._cancel(stream, "stale")
            return False
        for other in adoption.superseded:
            self._cancel(self._streams[other], "superseded")
        stream.adopted = True
        self._adopted_id = stream.id
        self.stats.adopted += 1
        return True

    def _finish(self, stream: _Stream) -> None:
        stream.done = True
        self.stats.completed += 1
        self.timeline.emit(
            LLMDone(
                text=stream.text,
                stream=stream.id,
                chunks=stream.chunks,
                duration=round(self.timeline.now() - stream.started, 4),
            )
        )
        if stream.adopted and stream.id == self._adopted_id:
            self._emit("end", "", stream)
        self._wake()

    def _fail(self, stream: _Stream, message: str, provider: str, retryable: bool) -> None:
        stream.done = True
        self._blocked_until = self.timeline.now() + self.policy.error_backoff_s
        self._record_error(stream.id, message, provider, retryable=retryable)
        if stream.adopted and stream.id == self._adopted_id and stream.text:
            self._emit("end", "", stream)  # keep what was said; the front-end releases its last word
        self._wake()

    def _record_error(
        self, stream_id: int | None, message: str, source: str, retryable: bool = False
    ) -> None:
        self.stats.errors += 1
        self.last_error = message
        logger.warning("%s: %s error: %s", self.session, source, message)
        self.timeline.emit(Error(text=message, stream=stream_id, source=source, retryable=retryable))

    def _cancel(self, stream: _Stream, reason: str) -> None:
        if stream.done:
            return
        stream.done = True
        self.stats.cancelled += 1
        self.timeline.emit(
            OracleCancel(
                text=stream.text or None, stream=stream.id, reason=reason, had_tokens=bool(stream.text)
            )
        )
        if stream.task is not None and stream.task is not asyncio.current_task():
            stream.task.cancel()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _emit(self, kind: OracleKind, text: str, stream: _Stream) -> None:
        now = self.timeline.now()
        op = OracleOp(kind, text, stream.id, now)
        self.stats.events += 1
        self._oracle_text = stream.text
        sent = ORACLE_SENT[kind]
        self.timeline.emit(
            sent(
                text=text if kind != "end" else stream.text,
                stream=stream.id,
                covered=round(stream.covered, 3),
            )
        )
        if self._sink is None:
            return
        try:
            self._sink(op)
        except Exception as exc:  # noqa: BLE001 - a broken consumer is recorded, the engine goes on
            self.stats.sink_errors += 1
            self._record_error(stream.id, f"oracle sink failed: {type(exc).__name__}: {exc}", "sink")
