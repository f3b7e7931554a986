"""The oracle policy alone, table by table: pure functions of state and time, no asyncio, no LLM.

The rules are REFERENCE section 2 (the released KAME back-end): start a stream when none runs; restart
when the user's word count grew by 2 or more since the last start, or a final arrived; at most 5 starts
per rolling 2 s; a restart cancels the previous stream; the parallel variant runs up to 5 streams,
started at least 0.5 s apart, and adopts a stream at its first token, cancelling older ones. Each row
runs under the released settings (``--first-token-grace 0``, the 0.5 s poll) and, beside them, the
project's defaults (a 2 s first-token grace, decisions per transcript).
"""

from __future__ import annotations

import pytest

from kame.backend.oracle_policy import (
    Adoption,
    Decision,
    OraclePolicy,
    PolicyState,
    RunningStream,
    adopt,
    decide,
    next_wakeup,
    trigger,
)

RELEASED = OraclePolicy(first_token_grace_s=0.0, poll_interval_s=0.5)
DEFAULTS = OraclePolicy()
PARALLEL_RELEASED = OraclePolicy(mode="parallel", first_token_grace_s=0.0, poll_interval_s=0.5)
PARALLEL_DEFAULTS = OraclePolicy(mode="parallel")

ANSWERING = (RunningStream(0, started=9.0, has_first_token=True),)
WAITING = (RunningStream(0, started=9.5, has_first_token=False),)  # 0.5 s without a first token at t=10
WAITED = (RunningStream(0, started=7.5, has_first_token=False),)  # 2.5 s without one at t=10
FIVE = tuple(RunningStream(i, started=6.0 + 0.6 * i, has_first_token=True) for i in range(5))


def state(**fields) -> PolicyState:
    base = {"has_user_text": True, "new_words": 0, "finals_since_start": 0}
    return PolicyState(**(base | fields))


WAIT = Decision("wait")
# (what, state at t = 10 s, decision under the released restart policy, under the project's defaults)
RESTART_ROWS = [
    ("nothing said yet", state(has_user_text=False, new_words=3), WAIT, WAIT),
    (
        "one word, nothing running: start",
        state(new_words=1),
        Decision("start", "idle"),
        Decision("start", "idle"),
    ),
    ("one word while an answer runs", state(new_words=1, running=ANSWERING), WAIT, WAIT),
    (
        "two more words restart the answering stream",
        state(new_words=2, running=ANSWERING),
        Decision("restart", "words", (0,)),
        Decision("restart", "words", (0,)),
    ),
    (
        "two more words while the answer waits for its first token: the grace protects it",
        state(new_words=2, running=WAITING),
        Decision("restart", "words", (0,)),
        WAIT,
    ),
    (
        "the grace is over",
        state(new_words=2, running=WAITED),
        Decision("restart", "words", (0,)),
        Decision("restart", "words", (0,)),
    ),
    (
        "a final restarts even within the grace",
        state(finals_since_start=1, running=WAITING),
        Decision("restart", "final", (0,)),
        Decision("restart", "final", (0,)),
    ),
    ("five starts in the last 2 s", state(new_words=2, starts=(8.1, 8.5, 9.0, 9.5, 9.9)), WAIT, WAIT),
    (
        "the oldest of five starts is 2 s old: the window has room again",
        state(new_words=2, starts=(8.0, 8.5, 9.0, 9.5, 9.9)),
        Decision("start", "words"),
        Decision("start", "words"),
    ),
    ("after an LLM error, back off", state(new_words=2, blocked_until=10.4), WAIT, WAIT),
]


@pytest.mark.parametrize(
    ("what", "now_state", "released", "defaults"), RESTART_ROWS, ids=[r[0] for r in RESTART_ROWS]
)
def test_restart_mode(what, now_state, released, defaults):
    assert decide(RELEASED, now_state, 10.0) == released
    assert decide(DEFAULTS, now_state, 10.0) == defaults


PARALLEL_ROWS = [
    ("one word, nothing running: start", state(new_words=1), Decision("start", "idle")),
    ("two more words start a second stream", state(new_words=2, running=ANSWERING, starts=(9.0,)),
     Decision("start", "words")),
    ("a final starts one too", state(finals_since_start=1, running=WAITING, starts=(9.0,)),
     Decision("start", "final")),
    ("the last start was 0.3 s ago", state(new_words=2, running=ANSWERING, starts=(9.7,)), WAIT),
    ("five streams running", state(new_words=2, running=FIVE, starts=(8.0,)), WAIT),
    ("five starts in the last 2 s", state(new_words=2, starts=(8.1, 8.5, 9.0, 9.2, 9.4)), WAIT),
]  # fmt: skip


@pytest.mark.parametrize(("what", "now_state", "expected"), PARALLEL_ROWS, ids=[r[0] for r in PARALLEL_ROWS])
def test_parallel_mode(what, now_state, expected):
    # The first-token grace is a restart-mode rule: in parallel mode both settings decide alike.
    assert decide(PARALLEL_RELEASED, now_state, 10.0) == expected
    assert decide(PARALLEL_DEFAULTS, now_state, 10.0) == expected


WAKEUP_ROWS = [
    # (what, policy, state, seconds until the decision can change at t = 10 s)
    ("nothing due", DEFAULTS, state(new_words=1, running=ANSWERING), None),
    ("the restart window frees a start", RELEASED, state(new_words=2, starts=(8.5, 8.6, 9.0, 9.5, 9.9)), 0.5),
    ("the error backoff ends", RELEASED, state(new_words=2, blocked_until=10.4), 0.4),
    ("the first-token grace ends", DEFAULTS, state(new_words=2, running=WAITING), 1.5),
    ("no grace in the released policy", RELEASED, state(new_words=2, running=WAITING), None),
    ("the parallel interval passes", PARALLEL_RELEASED, state(new_words=2, running=ANSWERING, starts=(9.7,)),
     0.2),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "policy", "now_state", "expected"), WAKEUP_ROWS, ids=[r[0] for r in WAKEUP_ROWS]
)
def test_when_to_decide_again(what, policy, now_state, expected):
    wake = next_wakeup(policy, now_state, 10.0)
    assert wake == (pytest.approx(expected) if expected is not None else None)


ADOPT_ROWS = [
    ("the first stream to speak is adopted", (0, -1, (0,)), Adoption(True)),
    ("a newer stream takes over and older ones are cancelled", (3, 1, (1, 2, 3, 4)), Adoption(True, (1, 2))),
    ("a stream older than the adopted one is stale", (1, 3, (1, 3)), Adoption(False)),
]


@pytest.mark.parametrize(("what", "args", "expected"), ADOPT_ROWS, ids=[r[0] for r in ADOPT_ROWS])
def test_adoption_at_the_first_token(what, args, expected):
    assert adopt(*args) == expected


def test_triggers_and_their_switches():
    assert trigger(RELEASED, state(finals_since_start=1, new_words=5)) == "final"  # a final wins
    no_final = OraclePolicy(restart_on_final=False)
    assert trigger(no_final, state(finals_since_start=1, running=ANSWERING)) is None
    assert trigger(OraclePolicy(min_new_words=3), state(new_words=2, running=ANSWERING)) is None
    assert trigger(OraclePolicy(min_new_words=3), state(new_words=3, running=ANSWERING)) == "words"
