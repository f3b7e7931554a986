"""The oracle engine: turns a growing transcript into a live stream of candidate answers (oracles).

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
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kame.backend.llm.base import ChatMessage, LLMError, LLMProvider
from kame.backend.oracle_events import OracleEvent, OracleSink
from kame.backend.prompts import load_prompt
from kame.backend.stt.base import STTError, STTStream, Transcript
from kame.runtime.timeline import Timeline

logger = logging.getLogger(__name__)

# Characters a speech synthesizer would read out literally or choke on (markdown, code, tables).
_UNSPEAKABLE = re.compile(r"[*#_`~|<>\[\]{}\\^]")


@dataclass
class OraclePolicy:
    """When to (re)ask the LLM. Defaults are the released KAME policy, decided per transcript."""

    mode: Literal["restart", "parallel"] = "restart"
    min_new_words: int = 2  # start a new answer when the user said this many more words...
    restart_on_final: bool = True  # ...or an utterance ended
    max_restarts: int = 5  # at most this many starts...
    restart_window_s: float = 2.0  # ...in any window this long
    poll_interval_s: float | None = None  # None: decide on each transcript; 0.5: the released polling
    max_parallel: int = 5  # parallel mode: streams running at once
    parallel_interval_s: float = 0.5  # parallel mode: least time between two starts
    error_backoff_s: float = 1.0  # after an LLM error, wait this long before asking again
    # Restart mode: new words do not cancel an answer that has waited less than this for its first token
    # (a final still does). When the LLM's time to first token exceeds the partial cadence, the released
    # policy cancels every answer before it says anything; this lets each one through. 0: released.
    first_token_grace_s: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in ("restart", "parallel"):
            raise ValueError(f"policy mode must be 'restart' or 'parallel', got {self.mode!r}")
        if self.min_new_words < 1 or self.max_restarts < 1 or self.max_parallel < 1:
            raise ValueError("min_new_words, max_restarts and max_parallel must be >= 1")
        if self.restart_window_s <= 0 or min(self.parallel_interval_s, self.error_backoff_s) < 0:
            raise ValueError("restart_window_s must be > 0; parallel_interval_s, error_backoff_s >= 0")
        if self.first_token_grace_s < 0:
            raise ValueError(f"first_token_grace_s must be >= 0, got {self.first_token_grace_s}")
        if self.poll_interval_s is not None and self.poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be > 0 or None, got {self.poll_interval_s}")


@dataclass
class OracleConfig:
    policy: OraclePolicy = field(default_factory=OraclePolicy)
    system_prompt: str | None = None  # the prompt itself; None: ``system_prompt_file`` or the default
    system_prompt_file: str | None = None
    prompt_format: Literal["chat", "transcript"] = "chat"  # turns as chat roles, or one transcript
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


@dataclass
class _Turn:
    role: Literal["user", "assistant"]
    text: str


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
        self._turns: list[_Turn] = []
        self._partial = ""  # the current utterance, not final yet
        self._finals_words = 0  # user words in finals so far
        self._words_at_start = 0  # user words when the last stream started
        self._finals_since_start = 0
        self._covered = 0.0  # audio covered by the newest transcript
        self._queue: deque[Transcript] = deque()
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
        self.timeline.record(
            transcript.kind,
            transcript.text,
            utterance=transcript.utterance,
            words=[[w.text, w.start, w.end] for w in transcript.words],
            covered=round(transcript.audio_t, 3),
            stable=transcript.stable,
            compute_s=round(transcript.compute_s, 4),
        )
        self.stats.transcripts += 1
        self._queue.append(transcript)
        if len(self._queue) > self.config.max_queued_transcripts:
            victim = next((t for t in self._queue if t.kind == "partial"), self._queue[0])
            self._queue.remove(victim)
            self.stats.dropped_transcripts += 1
            self.timeline.record("transcript_dropped", victim.text, kind=victim.kind)
        self._changed.set()

    def add_assistant_text(self, text: str) -> None:
        """Words the assistant actually said (the front-end's text), in order, as they are spoken."""
        if not text or not text.strip():
            return
        self.timeline.record("assistant_text", text)
        if self._turns and self._turns[-1].role == "assistant":
            self._turns[-1].text = _join(self._turns[-1].text, text)
        else:
            self._turns.append(_Turn("assistant", text.strip()))

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
        return self._finals_words + len(self._partial.split())

    @property
    def current_oracle(self) -> str:
        """The text of the oracle the front-end is reading (the last adopted answer)."""
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
            wake_in = self._next_wakeup()
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
        """Apply queued transcripts to the conversation state."""
        while self._queue:
            transcript = self._queue.popleft()
            self._covered = max(self._covered, transcript.audio_t)
            if transcript.kind == "final":
                self._partial = ""
                if transcript.text.strip():
                    self._finals_words += len(transcript.text.split())
                    if self._turns and self._turns[-1].role == "user":
                        self._turns[-1].text = _join(self._turns[-1].text, transcript.text)
                    else:
                        self._turns.append(_Turn("user", transcript.text.strip()))
                    self._finals_since_start += 1
            else:
                self._partial = transcript.text.strip()

    def _pending_trigger(self) -> str | None:
        """Why a new answer is due now (ignoring rate limits), or None."""
        new_words = self.user_words - self._words_at_start
        if not self._user_text():
            return None
        if self.policy.restart_on_final and self._finals_since_start:
            return "final"
        if new_words >= self.policy.min_new_words:
            return "words"
        if new_words > 0 and self.running_streams == 0:
            return "idle"
        return None

    def _next_wakeup(self) -> float | None:
        """Seconds until a rate limit or backoff expires, if a start is waiting on one."""
        if self._pending_trigger() is None:
            return None
        now = self.timeline.now()
        waits = [self._blocked_until - now]
        if len(self._starts) >= self.policy.max_restarts:
            waits.append(self._starts[0] + self.policy.restart_window_s - now)
        if self.policy.mode == "parallel" and self._starts:
            waits.append(self._starts[-1] + self.policy.parallel_interval_s - now)
        waiting = self._waiting_for_first_token(now)
        if waiting is not None:
            waits.append(waiting.started + self.policy.first_token_grace_s - now)
        wait = max(waits)
        return wait if wait > 0 else None

    def _maybe_start(self) -> None:
        reason = self._pending_trigger()
        if reason is None or self._closed:
            return
        now = self.timeline.now()
        while self._starts and self._starts[0] <= now - self.policy.restart_window_s:
            self._starts.popleft()
        if now < self._blocked_until or len(self._starts) >= self.policy.max_restarts:
            return
        if self.policy.mode == "parallel":
            if self._starts and now - self._starts[-1] < self.policy.parallel_interval_s:
                return
            if self.running_streams >= self.policy.max_parallel:
                return
        else:
            if reason != "final" and self._waiting_for_first_token(now) is not None:
                return  # re-evaluated on its first token or when its grace runs out
            for stream in list(self._streams.values()):
                if not stream.done:
                    self._cancel(stream, "restart")
        self._start(reason, now)

    def _waiting_for_first_token(self, now: float) -> _Stream | None:
        """Restart mode: a running stream still within its grace for the first token, if any."""
        grace = self.policy.first_token_grace_s
        if self.policy.mode != "restart" or grace <= 0:
            return None
        for stream in self._streams.values():
            if not stream.done and stream.first_token is None and now - stream.started < grace:
                return stream
        return None

    def _start(self, reason: str, now: float) -> None:
        stream = _Stream(
            id=self._next_id,
            task=None,
            started=now,
            user_text=self._user_text(),
            user_words=self.user_words,
            covered=self._covered,
            reason=reason,
        )
        self._next_id += 1
        self._starts.append(now)
        self._words_at_start = self.user_words
        self._finals_since_start = 0
        self._streams[stream.id] = stream
        self.stats.requests += 1
        messages = self._messages()
        self.timeline.record(
            "llm_request",
            stream.user_text,
            stream=stream.id,
            reason=reason,
            user_words=stream.user_words,
            covered=round(stream.covered, 3),
            messages=len(messages),
        )
        stream.task = asyncio.create_task(self._run_stream(stream, messages), name=f"kame-llm-{stream.id}")
        self._forget_finished()

    def _forget_finished(self) -> None:
        """Keep only running streams and the adopted one."""
        for stream_id in [i for i, s in self._streams.items() if s.done and i != self._adopted_id]:
            del self._streams[stream_id]

    # -- prompts ------------------------------------------------------------------------------------
    def _user_text(self) -> str:
        """What the user is saying in the current turn (finals since the assistant spoke + partial)."""
        turn = self._turns[-1].text if self._turns and self._turns[-1].role == "user" else ""
        return _join(turn, self._partial)

    def _history(self) -> list[_Turn]:
        """Turns with the current user turn completed by the partial."""
        turns = [_Turn(t.role, t.text) for t in self._turns]
        if self._partial:
            if turns and turns[-1].role == "user":
                turns[-1].text = _join(turns[-1].text, self._partial)
            else:
                turns.append(_Turn("user", self._partial))
        limit = self.config.max_history_messages
        return turns[-(limit + 1) :] if limit else turns[-1:]

    def _messages(self) -> list[ChatMessage]:
        turns = self._history()
        system = ChatMessage("system", self.system_prompt)
        if self.config.prompt_format == "transcript":
            lines = [f"{'user' if t.role == 'user' else 'assistant'}: {t.text}" for t in turns]
            content = "Conversation so far (the user may still be speaking):\n" + "\n".join(lines)
            return [system, ChatMessage("user", content)]
        while turns and turns[0].role != "user":  # chat templates want the user to speak first
            turns = turns[1:]
        return [system, *(ChatMessage(t.role, t.text) for t in turns)]

    # -- streaming ----------------------------------------------------------------------------------
    async def _run_stream(self, stream: _Stream, messages: list[ChatMessage]) -> None:
        chunks = self.llm.stream_chat(
            messages, max_tokens=self.config.max_tokens, temperature=self.config.temperature
        )
        try:
            async for raw in chunks:
                if stream.done:
                    break
                text = self._clean(raw, first=not stream.text)
                if not text:
                    continue
                if stream.first_token is None:
                    stream.first_token = self.timeline.now()
                    self.stats.first_tokens += 1
                    self.timeline.record(
                        "llm_first_token",
                        text,
                        stream=stream.id,
                        ttft=round(stream.first_token - stream.started, 4),
                        covered=round(stream.covered, 3),
                    )
                    if not self._adopt(stream):
                        return
                    self._wake()  # a restart may have waited for this first token
                text, cut = self._cap(stream, text)
                if text:
                    stream.text += text
                    stream.chunks += 1
                    kind = "reset" if stream.chunks == 1 else "append"
                    self._emit(kind, text, stream)
                if cut:
                    self.stats.truncated += 1
                    self.timeline.record("llm_truncated", stream=stream.id, max_words=self.config.max_words)
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
            self._fail(stream, f"{type(exc).__name__}: {exc}", getattr(self.llm, "name", "llm"), False)
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]

    def _adopt(self, stream: _Stream) -> bool:
        """A stream produced its first token: it takes over if it is newer than the current oracle."""
        if stream.id < self._adopted_id:
            self._cancel(stream, "stale")
            return False
        for other in list(self._streams.values()):
            if other.id < stream.id and not other.done:
                self._cancel(other, "superseded")
        stream.adopted = True
        self._adopted_id = stream.id
        self.stats.adopted += 1
        return True

    def _cap(self, stream: _Stream, text: str) -> tuple[str, bool]:
        """Cut ``text`` where the answer reaches ``max_words``; returns (text to keep, was cut)."""
        limit = self.config.max_words
        if limit is None:
            return text, False
        combined = stream.text + text
        if len(combined.split()) <= limit:
            return text, False
        words = re.finditer(r"\S+", combined)
        end = next(m.end() for i, m in enumerate(words) if i == limit - 1)
        return (combined[len(stream.text) : end] if end > len(stream.text) else ""), True

    def _clean(self, text: str, *, first: bool) -> str:
        if self.config.speakable_only:
            text = _UNSPEAKABLE.sub("", text)
        text = text.replace("\r", " ").replace("\n", " ").replace("\t", " ")
        return text.lstrip() if first else text

    def _finish(self, stream: _Stream) -> None:
        stream.done = True
        self.stats.completed += 1
        self.timeline.record(
            "llm_done",
            stream.text,
            stream=stream.id,
            chunks=stream.chunks,
            duration=round(self.timeline.now() - stream.started, 4),
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
        self.timeline.record("error", message, stream=stream_id, source=source, retryable=retryable)

    def _cancel(self, stream: _Stream, reason: str) -> None:
        if stream.done:
            return
        stream.done = True
        self.stats.cancelled += 1
        self.timeline.record(
            "oracle_cancel",
            stream.text or None,
            stream=stream.id,
            reason=reason,
            had_tokens=bool(stream.text),
        )
        if stream.task is not None and stream.task is not asyncio.current_task():
            stream.task.cancel()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _emit(self, kind: Literal["reset", "append", "end"], text: str, stream: _Stream) -> None:
        now = self.timeline.now()
        event = OracleEvent(kind, text, stream.id, now)
        self.stats.events += 1
        self._oracle_text = stream.text
        self.timeline.record(
            f"oracle_{kind}",
            text if kind != "end" else stream.text,
            stream=stream.id,
            covered=round(stream.covered, 3),
        )
        if self._sink is None:
            return
        try:
            self._sink(event)
        except Exception as exc:  # noqa: BLE001 - a broken consumer is recorded, the engine goes on
            self.stats.sink_errors += 1
            self._record_error(stream.id, f"oracle sink failed: {type(exc).__name__}: {exc}", "sink")


def _join(a: str, b: str) -> str:
    a, b = a.strip(), b.strip()
    return f"{a} {b}" if a and b else a or b
