"""Python's cyclic garbage in a long-running server: collected when a session ends, not by chance.

A finished session is not freed by reference counting: cancelled tasks keep their exceptions, whose
tracebacks keep the frames that hold the session, its back-end and its HTTP streams (measured: a
well-behaved client's session leaves 2,000-3,600 objects of cyclic garbage, whether its LLM answered,
stalled or died). CPython runs a full collection only when the objects that survived the young
generations reach a quarter of the long-lived ones, and torch, moshi and the models make 330 thousand
of those. So dead sessions pile up for many sessions, each pinning memory that Python does not count
(a soak with PocketSphinx, whose decoders hold about 96 MB each, grew by 500 MB a minute), and the
full collection that finally comes walks everything: 150 ms on this CPU, at a random moment of the
event loop.

So ``freeze_startup`` moves what start-up made into the permanent generation (``gc.freeze``), which
collections no longer walk, and ``collect`` runs when a session ends: it then only walks what sessions
made. Heavy resources are also released when their owners close (PocketSphinx decoders go back to
their engine), so none of this is needed for correctness, only for memory that returns on time.
"""

from __future__ import annotations

import gc
import time


def freeze_startup() -> None:
    """Collect, then freeze everything alive (models, modules, the server): start-up is over."""
    gc.collect()
    gc.freeze()


def collect() -> float:
    """A full collection of what is not frozen; returns its seconds."""
    started = time.perf_counter()
    gc.collect()
    return time.perf_counter() - started
