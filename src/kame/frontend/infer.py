"""Offline inference: a recording plus an oracle script in, the assistant's audio and tokens out.

The same batched engine as the live server, driven one frame at a time with B = 1, so that anyone can
check exactly what the model was fed and what it produced (``TOKENS.json``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kame.frames import FRAME_SIZE, frames_for, place_reply
from kame.frontend.checkpoint import Frontend
from kame.frontend.engine import FrontendEngine
from kame.frontend.generator import SamplingConfig, default_oracle_stream
from kame.frontend.oracle_script import completes_oracle
from kame.frontend.rng import seeded
from kame.oracle import OracleOp

logger = logging.getLogger(__name__)


@dataclass
class InferenceResult:
    audio: np.ndarray  # the assistant's 24 kHz audio on the input's clock (kame.frames.place_reply)
    frames: list[dict] = field(default_factory=list)  # TOKENS.json entries
    text: str = ""  # the assistant's inner-monologue text
    skipped_oracle_tokens: int = 0

    def tokens_json(self) -> dict:
        return {"frames": self.frames}


def run_inference(
    frontend: Frontend,
    user_audio: np.ndarray,
    script: list[OracleOp],
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
    oracle_stream: bool | None = None,
) -> InferenceResult:
    """Step the front-end over ``user_audio`` (24 kHz mono), applying ``script`` at frame boundaries.

    The last partial frame is padded with silence. ``oracle_stream=None`` chooses by
    ``default_oracle_stream``: off (stock Moshi) only for plain Moshi weights with an empty script.
    """
    if oracle_stream is None:
        oracle_stream = default_oracle_stream(not frontend.upgraded_from_moshi, bool(script))
    frames = max(1, frames_for(len(user_audio)))
    padded = np.zeros(frames * FRAME_SIZE, dtype=np.float32)
    padded[: len(user_audio)] = user_audio
    late_ops = [op for op in script if op.frame >= frames]
    if late_ops:
        logger.warning("%d oracle operations come after the audio ends and are not applied", len(late_ops))
    with (
        seeded(seed, frontend.device),
        FrontendEngine(frontend, max_sessions=1, sampling=sampling, oracle_stream=oracle_stream) as engine,
    ):
        return _run(engine, frontend, padded, len(user_audio), script)


def _run(
    engine: FrontendEngine, frontend: Frontend, padded: np.ndarray, input_samples: int, script: list[OracleOp]
) -> InferenceResult:
    slot = engine.join()
    gen = engine.generator
    frames = len(padded) // FRAME_SIZE
    complete = completes_oracle(script)  # a script's oracle text is complete after its last operation
    pending = [(op, done) for op, done in zip(script, complete, strict=True) if op.frame < frames]
    step_audio: list[np.ndarray] = []
    result = InferenceResult(np.zeros(0, dtype=np.float32))
    pieces: list[int] = []
    for frame in range(frames):
        while pending and pending[0][0].frame <= frame:
            op, done = pending.pop(0)
            gen.apply_oracle(slot, op.kind, op.text)
            if done and op.kind != "end":
                gen.apply_oracle(slot, "end")
        (output,) = engine.step({slot: padded[frame * FRAME_SIZE : (frame + 1) * FRAME_SIZE]})
        r = output.result
        step_audio.append(output.pcm)
        result.frames.append(
            {"frame": r.step, "user": r.user, "oracle": r.oracle, "text": r.text, "audio": r.audio}
        )
        if r.text is not None:
            pieces.append(r.text)
    result.audio = place_reply(step_audio, input_samples)
    result.skipped_oracle_tokens = gen.oracle_skipped(slot)
    if frontend.tokenizer is not None:
        words = [
            t
            for t in pieces
            if t not in (frontend.lm.text_padding_token_id, frontend.lm.end_of_text_padding_id)
        ]
        result.text = frontend.tokenizer.decode(words)
    engine.leave(slot)
    return result


def write_tokens_json(path: str | Path, result: InferenceResult) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.tokens_json()))
    return path
