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
import torch

from kame.frontend.checkpoint import Frontend
from kame.frontend.engine import FRAME_SIZE, FrontendEngine
from kame.frontend.generator import SamplingConfig
from kame.frontend.oracle_script import OracleOp

logger = logging.getLogger(__name__)


@dataclass
class InferenceResult:
    audio: np.ndarray  # the assistant's 24 kHz audio, one frame per input frame
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
) -> InferenceResult:
    """Step the front-end over ``user_audio`` (24 kHz mono), applying ``script`` at frame boundaries."""
    if seed is not None:
        torch.manual_seed(seed)
    frames = max(1, -(-len(user_audio) // FRAME_SIZE))
    padded = np.zeros(frames * FRAME_SIZE, dtype=np.float32)
    padded[: len(user_audio)] = user_audio
    late_ops = [op for op in script if op.frame >= frames]
    if late_ops:
        logger.warning("%d oracle operations come after the audio ends and are not applied", len(late_ops))
    with FrontendEngine(frontend, max_sessions=1, sampling=sampling) as engine:
        return _run(engine, frontend, padded, frames, script)


def _run(
    engine: FrontendEngine, frontend: Frontend, padded: np.ndarray, frames: int, script: list[OracleOp]
) -> InferenceResult:
    slot = engine.join()
    gen = engine.generator
    pending = [op for op in script if op.frame < frames]
    out_audio = np.zeros_like(padded)
    result = InferenceResult(out_audio)
    pieces: list[int] = []
    for frame in range(frames):
        while pending and pending[0].frame <= frame:
            op = pending.pop(0)
            if op.op == "reset":
                gen.oracle_reset(slot)
                if op.text:
                    gen.oracle_append_text(slot, op.text)
            elif op.op == "append":
                gen.oracle_append_text(slot, op.text)
            else:
                gen.oracle_end(slot)
        (output,) = engine.step({slot: padded[frame * FRAME_SIZE : (frame + 1) * FRAME_SIZE]})
        r = output.result
        out_audio[frame * FRAME_SIZE : (frame + 1) * FRAME_SIZE] = output.pcm
        result.frames.append(
            {"frame": r.step, "user": r.user, "oracle": r.oracle, "text": r.text, "audio": r.audio}
        )
        if r.text is not None:
            pieces.append(r.text)
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
