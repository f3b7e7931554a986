"""The two frame clocks behind one ``Stepper`` interface: the thread and the child process answer the
same calls with the same exceptions, and the process's pipe carries only the typed messages."""

from __future__ import annotations

import asyncio
import pickle

import numpy as np
import pytest

from kame.frontend.checkpoint import load_frontend
from kame.frontend.engine import FrontendEngine
from kame.frontend.generator import SlotsFullError
from kame.oracle import OracleOp
from kame.runtime import frame_pipe as pipe
from kame.runtime.scheduler import FrameStepper, FrontendDown, FrontendProcessSpec, ProcessStepper, Stepper

MEMBERS = ("stats", "on_step", "capacity", "active", "device", "failure", "pid", "can_restart")
METHODS = ("start", "stop", "restart", "join", "leave", "push_audio", "send_oracle")


class Sink:
    def deliver(self, frame, step_s, late) -> None:
        pass


async def fill_then_overflow(stepper: Stepper) -> tuple[int, BaseException]:
    slot = await stepper.join(Sink())
    with pytest.raises(SlotsFullError) as caught:
        await stepper.join(Sink())
    stepper.push_audio(slot, np.zeros(1920, np.float32))
    stepper.send_oracle(slot, OracleOp("reset", "Paris", 0, 0.0))
    stepper.leave(slot)
    return slot, caught.value


def check_interface(stepper: Stepper) -> None:
    for name in MEMBERS:
        getattr(stepper, name)  # every member exists on both, no probing needed
    for name in METHODS:
        assert callable(getattr(stepper, name)), name


def test_thread_and_process_steppers_answer_alike(tiny_checkpoint):
    engine = FrontendEngine(load_frontend(tiny_checkpoint), max_sessions=1)
    thread = FrameStepper(engine)
    check_interface(thread)
    thread.start()
    try:
        assert thread.failure is None and thread.pid is None and not thread.can_restart
        slot, full = asyncio.run(fill_then_overflow(thread))
        with pytest.raises(FrontendDown, match="cannot be restarted"):
            thread.restart()
    finally:
        thread.stop()
        engine.close()

    process = ProcessStepper(FrontendProcessSpec(frontend=tiny_checkpoint, max_sessions=1, warm_up_frames=1))
    check_interface(process)
    process.start()
    try:
        assert process.failure is None and process.pid is not None and process.can_restart
        process_slot, process_full = asyncio.run(fill_then_overflow(process))
        assert process_slot == slot and type(process_full) is type(full)
    finally:
        process.stop()
    assert process.failure is not None  # stopped: the front-end no longer serves...
    with pytest.raises(FrontendDown):  # ...and a join says so, as the thread's would
        asyncio.run(process.join(Sink()))


def test_pipe_messages_are_typed_and_pickle():
    op = OracleOp("append", "more", 3, 1.25)
    messages = [
        pipe.Join(1, 0.5), pipe.Leave(0), pipe.Audio([(0, np.ones(4, np.float32))]), pipe.Oracle(0, op),
        pipe.Stop(), pipe.Ready(2), pipe.StartFailed("boom"), pipe.Joined(1, None, "full", full=True),
        pipe.Frames(0.01, False, []), pipe.ClockStats(0, 1),
    ]  # fmt: skip
    for message in messages:
        back = pickle.loads(pickle.dumps(message))
        assert type(back) is type(message)
    assert pickle.loads(pickle.dumps(pipe.Oracle(0, op))).op == op
