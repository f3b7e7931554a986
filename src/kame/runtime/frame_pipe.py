"""The messages between the server and its front-end process, one typed class each (both ends share them).

The parent (``ProcessStepper``) sends ``Join``, ``Leave``, ``Audio``, ``Oracle`` and ``Stop``; the child
(the frame clock, ``_child_main``) answers ``Ready`` or ``StartFailed`` once, then ``Joined`` for each
join, ``Frames`` after every step and ``ClockStats`` now and then. They are pickled dataclasses on a
``multiprocessing`` pipe; a message of a type not listed here is a bug on the other end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from kame.oracle import OracleOp

if TYPE_CHECKING:
    from kame.runtime.scheduler import SlotFrame

# -- to the child -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Join:
    """Give a new session a slot at the next frame boundary; answered by ``Joined(request)``."""

    request: int
    max_backlog_s: float


@dataclass(frozen=True)
class Leave:
    slot: int


@dataclass(frozen=True)
class Audio:
    """User audio (24 kHz float32) for one or more slots, coalesced into one message."""

    chunks: list[tuple[int, np.ndarray]] = field(default_factory=list)


@dataclass(frozen=True)
class Oracle:
    slot: int
    op: OracleOp


@dataclass(frozen=True)
class Stop:
    pass


ToChild = Join | Leave | Audio | Oracle | Stop

# -- to the parent ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """The front-end is loaded and warmed up."""

    capacity: int


@dataclass(frozen=True)
class StartFailed:
    error: str


@dataclass(frozen=True)
class Joined:
    """The answer to ``Join``: a slot, or an error (``full``: every slot was taken)."""

    request: int
    slot: int | None
    error: str | None = None
    full: bool = False


@dataclass(frozen=True)
class Frames:
    """One step's results for every session it stepped."""

    step_s: float
    late: bool
    frames: list[SlotFrame]


@dataclass(frozen=True)
class ClockStats:
    resyncs: int
    errors: int


ToParent = Ready | StartFailed | Joined | Frames | ClockStats
