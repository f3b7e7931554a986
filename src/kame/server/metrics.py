"""Prometheus metrics, declared in one place and fed by observers (the server's code never formats them).

The frame clock reports each step; each session's timeline reports oracle application lags, LLM times
to first token and errors. Everything lands in one registry per server so that tests can run several.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STEP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.1, 0.15, 0.2, 0.5)
LAG_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.12, 0.16, 0.25, 0.5, 1.0, 2.0, 5.0)


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
        self.errors = Counter(
            "kame_errors_total", "Errors on session timelines, by source", ["source"], registry=r
        )

    def on_step(self, step_s: float, sessions: int, late: bool) -> None:
        """Frame-clock observer (called on the stepper's thread)."""
        self.step_seconds.observe(step_s)
        self.frames.inc(sessions)
        if late:
            self.late_frames.inc(sessions)

    def on_event(self, event: dict[str, Any]) -> None:
        """Timeline observer (any thread)."""
        kind = event["type"]
        if kind == "oracle_applied":
            self.oracle_lag.observe(float(event.get("lag", 0.0)))
        elif kind == "llm_first_token" and "ttft" in event:
            self.llm_ttft.observe(float(event["ttft"]))
        elif kind in ("oracle_reset", "oracle_append", "oracle_end", "oracle_cancel"):
            self.oracle_events.labels(kind.removeprefix("oracle_")).inc()
        elif kind == "error":
            self.errors.labels(str(event.get("source", "unknown"))).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
