"""When to (re)ask the LLM: the oracle engine's policy, as pure functions of state and time.

The released KAME policy (REFERENCE section 2): ask when the user said ``min_new_words`` more words or
an utterance ended, at most ``max_restarts`` starts per ``restart_window_s``; either restart (one stream
at a time, a new one cancels the old) or run in parallel (up to ``max_parallel`` streams, at least
``parallel_interval_s`` apart; the first newer one to produce a token is adopted, older ones are
cancelled). One deliberate change, ``first_token_grace_s``: in restart mode new words do not cancel an
answer still waiting for its first token (a final still does); 0 restores the released rule.

Nothing here touches asyncio, an LLM or a clock: the engine describes its state (``PolicyState``), asks
``decide`` what to do now, and carries the decision out. The table-driven tests check these rules alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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


@dataclass(frozen=True)
class RunningStream:
    """An answer still streaming, as the policy sees it."""

    id: int
    started: float  # session time
    has_first_token: bool


@dataclass(frozen=True)
class PolicyState:
    """What the policy decides on. ``running`` is ordered by stream id."""

    has_user_text: bool  # the user said something in the current turn
    new_words: int  # user words since the last start
    finals_since_start: int  # utterances ended since the last start
    running: tuple[RunningStream, ...] = ()
    starts: tuple[float, ...] = ()  # session times of earlier starts, oldest first
    blocked_until: float = 0.0  # error backoff


@dataclass(frozen=True)
class Decision:
    """``wait``: nothing now; ``start``: a new answer beside the running ones; ``restart``: cancel
    ``cancel`` (reason ``restart``) and start a new one. ``reason`` is why a new answer is due."""

    action: Literal["wait", "start", "restart"]
    reason: str | None = None
    cancel: tuple[int, ...] = ()


@dataclass(frozen=True)
class Adoption:
    """What a stream's first token does: it takes over (cancelling older ``superseded`` streams) or,
    if a newer stream already has, it is itself cancelled as ``stale``."""

    adopt: bool
    superseded: tuple[int, ...] = ()


WAIT = Decision("wait")


def trigger(policy: OraclePolicy, state: PolicyState) -> str | None:
    """Why a new answer is due now (ignoring rate limits): ``final``, ``words``, ``idle``, or None."""
    if not state.has_user_text:
        return None
    if policy.restart_on_final and state.finals_since_start:
        return "final"
    if state.new_words >= policy.min_new_words:
        return "words"
    if state.new_words > 0 and not state.running:
        return "idle"
    return None


def waiting_for_first_token(policy: OraclePolicy, state: PolicyState, now: float) -> RunningStream | None:
    """Restart mode: a running stream still within its grace for the first token, if any."""
    grace = policy.first_token_grace_s
    if policy.mode != "restart" or grace <= 0:
        return None
    for stream in state.running:
        if not stream.has_first_token and now - stream.started < grace:
            return stream
    return None


def decide(policy: OraclePolicy, state: PolicyState, now: float) -> Decision:
    """What to do at session time ``now``."""
    reason = trigger(policy, state)
    if reason is None:
        return WAIT
    starts = [s for s in state.starts if s > now - policy.restart_window_s]
    if now < state.blocked_until or len(starts) >= policy.max_restarts:
        return WAIT
    if policy.mode == "parallel":
        if starts and now - starts[-1] < policy.parallel_interval_s:
            return WAIT
        if len(state.running) >= policy.max_parallel:
            return WAIT
        return Decision("start", reason)
    if reason != "final" and waiting_for_first_token(policy, state, now) is not None:
        return WAIT  # re-evaluated on its first token or when its grace runs out
    cancel = tuple(stream.id for stream in state.running)
    return Decision("restart" if cancel else "start", reason, cancel)


def next_wakeup(policy: OraclePolicy, state: PolicyState, now: float) -> float | None:
    """Seconds until a rate limit, backoff or grace expires, if a due answer waits on one."""
    if trigger(policy, state) is None:
        return None
    waits = [state.blocked_until - now]
    if len(state.starts) >= policy.max_restarts:
        waits.append(state.starts[0] + policy.restart_window_s - now)
    if policy.mode == "parallel" and state.starts:
        waits.append(state.starts[-1] + policy.parallel_interval_s - now)
    waiting = waiting_for_first_token(policy, state, now)
    if waiting is not None:
        waits.append(waiting.started + policy.first_token_grace_s - now)
    wait = max(waits)
    return wait if wait > 0 else None


def adopt(stream_id: int, adopted_id: int, running: tuple[int, ...]) -> Adoption:
    """Stream ``stream_id`` produced its first token; ``adopted_id`` is the one the front-end reads."""
    if stream_id < adopted_id:
        return Adoption(False)
    return Adoption(True, tuple(other for other in running if other < stream_id))
