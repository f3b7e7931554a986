"""The frame geometry every layer shares, and the one timing convention of every reply file.

Moshi's front-end runs on Mimi's frames: 24 kHz mono audio in frames of 1920 samples, 12.5 frames a
second, 80 ms each. Frame ``f`` covers input time ``[80 f, 80 f + 80)`` ms.

Timing convention (README, "Timing"): the step that consumes input frame ``s`` can only run once that
frame has been heard in full, so the audio it returns is placed at the end of that frame,
``80 (s + 1)`` ms, the earliest moment it could be heard. Every reply WAV the project writes is 24 kHz,
on the input's clock, and at least as long as the input, so ``input.wav``/``output.wav`` pairs measure
true response timing.
"""

from __future__ import annotations

import math

import numpy as np

SAMPLE_RATE = 24000
FRAME_RATE = 12.5
FRAME_SIZE = 1920  # samples per frame
FRAME_S = FRAME_SIZE / SAMPLE_RATE  # 0.08 s
REPLY_DELAY_FRAMES = 1  # a step's audio is heard one frame after the start of the input frame it consumed


def frame_of(time_s: float) -> int:
    """The frame whose 80 ms contain ``time_s`` (so an event at ``time_s`` is applied before its step)."""
    return math.floor(time_s * FRAME_RATE + 1e-9)


def frames_for(samples: int) -> int:
    """Frames needed to cover ``samples`` of 24 kHz audio (the last partial frame counts)."""
    return -(-samples // FRAME_SIZE)


def place_reply(step_audio: list[np.ndarray], input_samples: int) -> np.ndarray:
    """Lay the audio returned by steps 0, 1, ... on the input's clock, by the timing convention.

    Step ``s``'s audio starts at sample ``FRAME_SIZE * (s + REPLY_DELAY_FRAMES)``; the result is at least
    ``input_samples`` long (silence where nothing was produced yet).
    """
    offset = FRAME_SIZE * REPLY_DELAY_FRAMES
    produced = sum(len(chunk) for chunk in step_audio)
    out = np.zeros(max(input_samples, offset + produced), dtype=np.float32)
    position = offset
    for chunk in step_audio:
        out[position : position + len(chunk)] = chunk
        position += len(chunk)
    return out
