"""Prometheus metrics, declared in one place and fed by observers (the server's code never formats them).

The frame clock reports each step; each session's timeline reports oracle application lags, LLM times
to first token, errors and the response latency (``ResponseLatency``). Everything lands in one registry
per server so that tests can run several.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

from kame.events import (
    ORACLE_TIMELINE_EVENTS,
    AssistantWord,
    Error,
    Final,
    LLMFirstToken,
    OracleApplied,
    ReplyEnd,
    ReplyStart,
    TurnEnd,
)
from kame.timeline import Event, Timeline

STEP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.1, 0.15, 0.2, 0.5)
LAG_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.12, 0.16, 0.25, 0.5, 1.0, 2.0, 5.0)
# Response latency is negative when the assistant starts before the user has finished.
RESPONSE_BUCKETS = (-2.0, -1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
# The ``kind`` label of each oracle event: reset, append, end, cancel.
_ORACLE_KINDS = {cls.TYPE: cls.TYPE.removeprefix("oracle_") for cls in ORACLE_TIMELINE_EVENTS}


class ResponseLatency:
    """A live timeline observer of the project's one response latency.

    Response latency: the time of the assistant's first word after the user's turn began, minus the end
    of the user's last word (from the final transcript's word times). Negative when the assistant started
    first. Each user turn (ended by a final with words) gives at most one figure, to ``observe``. Where the
    cascade ended the turn (``TurnEnd``), its ``user_end`` (the VAD's stop minus its confirmation silence)
    replaces the final's last word end, which Whisper stretches into the silence after it.
    """

    TYPES = (Final, TurnEnd, AssistantWord)

    def __init__(self, observe: Callable[[float], None]) -> None:
        self._observe = observe
        self._turn_start: float | None = None  # the current user turn's first word
        self._said: deque[float] = deque(maxlen=2000)  # the assistant's words since the last figure
        self._user_end: float | None = None  # a finished turn waiting for the assistant's first word

    def __call__(self, event: Event) -> None:
        if event["type"] == Final.TYPE:
            words = [w for w in event.get("words", ()) if len(w) >= 3]
            if not words:
                return
            if self._turn_start is None:
                self._turn_start = float(words[0][1])
            user_end = float(words[-1][2])
            started = next((t for t in self._said if t >= self._turn_start), None)
            if started is not None:
                self._figure(started - user_end)  # the assistant had started first
            else:
                self._user_end = user_end
        elif event["type"] == TurnEnd.TYPE:
            if self._user_end is not None:
                self._user_end = float(event["user_end"])
        elif event["type"] == AssistantWord.TYPE:
            if self._user_end is not None:
                self._figure(float(event["t"]) - self._user_end)
            else:
                self._said.append(float(event["t"]))

    def _figure(self, latency: float) -> None:
        self._observe(latency)
        self._turn_start = self._user_end = None
        self._said.clear()


GC_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("kame_sessions_active", "Sessions being served", registry=r)
        self.sessions_queued = Gauge("kame_sessions_queued", "Clients waiting for a free slot", registry=r)
        self.capacity = Gauge("kame_sessions_capacity", "Front-end slots (batch size)", registry=r)
        self.sessions_total = Counter("kame_sessions_total", "Sessions started", registry=r)
        self.sessions_rejected = Counter(
            "kame_sessions_rejected_total", "Clients refused: server full", registry=r
        )
        self.sessions_ended = Counter(
            "kame_sessions_ended_total", "Sessions ended, by reason", ["reason"], registry=r
        )
        self.sessions_refused = Counter(
            "kame_sessions_refused_total",
            "WebSocket upgrades refused by access rules, by HTTP status (401 token, 403 origin, 429 limit)",
            ["status"], registry=r,
        )  # fmt: skip
        self.input_too_fast = Counter(
            "kame_input_too_fast_seconds_total",
            "User audio dropped because a client sent it faster than real time", registry=r,
        )  # fmt: skip
        self.frontend_restarts = Counter(
            "kame_frontend_restarts_total",
            "Times the front-end process was restarted after dying",
            registry=r,
        )
        self.up = Gauge(
            "kame_up", "1 while the front-end is serving, 0 while it is down or restarting", registry=r
        )
        self.step_seconds = Histogram(
            "kame_step_seconds", "Front-end step (Mimi encode, LM, Mimi decode) for the whole batch",
            buckets=STEP_BUCKETS, registry=r,
        )  # fmt: skip
        self.frames = Counter("kame_frames_total", "Session-frames stepped", registry=r)
        self.late_frames = Counter(
            "kame_late_frames_total", "Session-frames whose step missed its deadline", registry=r
        )
        self.oracle_lag = Histogram(
            "kame_oracle_lag_seconds", "From an oracle event leaving the back-end to its frame boundary",
            buckets=LAG_BUCKETS, registry=r,
        )  # fmt: skip
        self.llm_ttft = Histogram(
            "kame_llm_ttft_seconds", "LLM time to first token", buckets=LAG_BUCKETS, registry=r
        )
        self.oracle_events = Counter(
            "kame_oracle_events_total", "Oracle operations, by kind", ["kind"], registry=r
        )
        self.cascade_latency = Histogram(
            "kame_cascade_response_latency_seconds",
            "Cascade: first reply audio played minus the end of the user's speech (VAD stop minus its "
            "confirmation silence)", buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.cascade_stage = Histogram(
            "kame_cascade_stage_seconds", "Cascade: the response latency's stages (they add up to it)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.cascade_replies = Counter(
            "kame_cascade_replies_total", "Cascade replies, by how they ended", ["reason"], registry=r
        )
        self.errors = Counter(
            "kame_errors_total", "Errors on session timelines, by source", ["source"], registry=r
        )
        self.cpu_per_frame = Gauge(
            "kame_cpu_ms_per_session_frame",
            "CPU milliseconds per session-frame over the last ~10 s, by process (server: WebSockets, Opus, "
            "sessions, back-end; frontend: the frame-clock child, when there is one; audio: the Opus "
            "workers, with --audio-workers)",
            ["process"], registry=r,
        )  # fmt: skip
        self.cpu_seconds = Gauge(
            "kame_cpu_seconds", "CPU seconds used since start, by process", ["process"], registry=r
        )
        self.gc_seconds = Histogram(
            "kame_gc_seconds", "Python's full garbage collection after a session ended (kame serve)",
            buckets=GC_BUCKETS, registry=r,
        )  # fmt: skip
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, process_cpu_...
        self.response_latency = Histogram(
            "kame_response_latency_seconds",
            "The assistant's first word after a user turn minus the end of the user's last word "
            "(negative: it started first)",
            buckets=RESPONSE_BUCKETS, registry=r,
        )  # fmt: skip

    def on_step(self, step_s: float, sessions: int, late: bool) -> None:
        """Frame-clock observer (called on the stepper's thread)."""
        self.step_seconds.observe(step_s)
        self.frames.inc(sessions)
        if late:
            self.late_frames.inc(sessions)

    def observe(self, timeline: Timeline) -> None:
        """Subscribe this registry's observers to one session's timeline."""
        timeline.subscribe(
            self.on_event, OracleApplied, LLMFirstToken, Error, ReplyStart, ReplyEnd, *ORACLE_TIMELINE_EVENTS
        )
        timeline.subscribe(ResponseLatency(self.response_latency.observe), *ResponseLatency.TYPES)

    def on_event(self, event: Event) -> None:
        """Timeline observer (any thread)."""
        kind = event["type"]
        if kind == OracleApplied.TYPE:
            self.oracle_lag.observe(float(event.get("lag", 0.0)))
        elif kind == LLMFirstToken.TYPE and "ttft" in event:
            self.llm_ttft.observe(float(event["ttft"]))
        elif kind in _ORACLE_KINDS:
            self.oracle_events.labels(_ORACLE_KINDS[kind]).inc()
        elif kind == Error.TYPE:
            self.errors.labels(str(event.get("source", "unknown"))).inc()
        elif kind == ReplyStart.TYPE:
            self.cascade_latency.observe(float(event["latency"]))
            for stage in ReplyStart.STAGES:
                self.cascade_stage.labels(stage).observe(max(0.0, float(event[stage])))
        elif kind == ReplyEnd.TYPE:
            self.cascade_replies.labels(str(event.get("reason", "unknown"))).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class CpuSample:
    at: float  # monotonic seconds
    server_s: float  # CPU seconds of this process (every thread)
    frontend_s: float  # CPU seconds of the frame-clock child process (0 without one)
    audio_s: float  # CPU seconds of the audio workers, those that stopped included (0 without any)
    frames: int  # session-frames stepped so far


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of another process, from /proc (0 where there is none)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class CpuMeter:
    """CPU time per session-frame of the server process and of the frame-clock child."""

    def __init__(
        self,
        frames: Callable[[], int],
        child_pid: Callable[[], int | None],
        worker_pids: Callable[[], list[int]] = list,
        window_s: float = 10.0,
    ):
        self._frames = frames
        self._child_pid = child_pid
        self._worker_pids = worker_pids
        self._workers: dict[int, float] = {}  # pid -> its last CPU seconds (kept once it stops)
        self._window_s = window_s
        self._child_base = 0.0  # CPU of children that died (a restarted front-end starts at 0 again)
        self._child_last = 0.0
        self._pid: int | None = None
        self._samples: deque[CpuSample] = deque()

    def sample(self) -> CpuSample:
        pid = self._child_pid()
        if pid != self._pid:
            self._child_base += self._child_last
            self._child_last, self._pid = 0.0, pid
        if pid is not None:
            self._child_last = max(self._child_last, process_cpu_s(pid))
        for worker in self._worker_pids():
            self._workers[worker] = max(self._workers.get(worker, 0.0), process_cpu_s(worker))
        return CpuSample(
            time.monotonic(), time.process_time(), self._child_base + self._child_last,
            sum(self._workers.values()), self._frames(),
        )  # fmt: skip

    def update(self, metrics: ServerMetrics) -> None:
        """Take a sample and set the gauges over the window (called every second or so)."""
        now = self.sample()
        self._samples.append(now)
        while len(self._samples) > 2 and now.at - self._samples[0].at > self._window_s:
            self._samples.popleft()
        metrics.cpu_seconds.labels("server").set(now.server_s)
        metrics.cpu_seconds.labels("frontend").set(now.frontend_s)
        metrics.cpu_seconds.labels("audio").set(now.audio_s)
        first = self._samples[0]
        frames = now.frames - first.frames
        if frames > 0:
            metrics.cpu_per_frame.labels("server").set(1e3 * (now.server_s - first.server_s) / frames)
            metrics.cpu_per_frame.labels("frontend").set(1e3 * (now.frontend_s - first.frontend_s) / frames)
            metrics.cpu_per_frame.labels("audio").set(1e3 * (now.audio_s - first.audio_s) / frames)
