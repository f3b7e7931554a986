"""The front-end's full step over a batch of sessions: Mimi encode -> oracle LM step -> Mimi decode.

One call advances every session that brought a frame of user audio (1920 samples at 24 kHz) by one
80 ms step; sessions without a frame stand still (moshi's exec mask), so sessions join, leave and stall
independently. Not thread-safe: the frame scheduler owns it on its own thread.

Session start, as Moshi's and the released KAME servers do it: a session's first frame is encoded, then
its Mimi streaming state is reset, so that frame 1 is encoded with fresh left padding (the first
encoded frame carries the encoder's padding; its codes are only read as step 0's input, where every
stream takes its initial token anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kame.frames import FRAME_SIZE, SAMPLE_RATE
from kame.frontend.checkpoint import Frontend
from kame.frontend.compile import compile_policy
from kame.frontend.generator import OracleGenerator, SamplingConfig, StepResult


@dataclass
class FrameOutput:
    """A session's step: what was fed and produced, and the assistant's 80 ms of audio."""

    result: StepResult
    pcm: np.ndarray  # float32 [1920]; silence while the model has produced nothing yet


class FrontendEngine:
    """Batched Mimi + oracle LM over ``max_sessions`` slots."""

    def __init__(
        self,
        frontend: Frontend,
        max_sessions: int = 1,
        sampling: SamplingConfig | None = None,
        oracle_stream: bool = True,
    ) -> None:
        self.frontend = frontend
        self.mimi = frontend.mimi
        if self.mimi.frame_size != FRAME_SIZE or self.mimi.sample_rate != SAMPLE_RATE:
            raise ValueError(
                f"Mimi runs at {self.mimi.sample_rate} Hz with {self.mimi.frame_size}-sample frames; "
                f"the front-end needs {SAMPLE_RATE} Hz and {FRAME_SIZE}"
            )
        self.max_sessions = max_sessions
        self.device = frontend.device
        if sampling is None:  # the checkpoint's own sampling (its lm_gen_config), as the CLI commands use
            sampling = SamplingConfig.merged(frontend.lm_gen_config)
        self.generator = OracleGenerator(
            frontend.lm, frontend.tokenizer, max_sessions, sampling, oracle_stream=oracle_stream
        )
        self._mimi_streaming = self.mimi.streaming(max_sessions)
        self._mimi_mask: torch.Tensor | None = None
        self._first_frame_pending: set[int] = set()  # slots whose first frame is not encoded yet

    def close(self) -> None:
        """Leave streaming mode so that the models can serve another engine."""
        self.generator.close()
        self._mimi_streaming.close()

    def __enter__(self) -> FrontendEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Sessions and oracle operations are the generator's; the engine adds the codec's state.

    def join(self) -> int:
        slot = self.generator.join()
        self._reset_mimi([slot])
        self._first_frame_pending.add(slot)
        return slot

    def leave(self, slot: int) -> None:
        self.generator.leave(slot)
        self._reset_mimi([slot])
        self._first_frame_pending.discard(slot)

    def _reset_mimi(self, slots: list[int]) -> None:
        mask = torch.zeros(self.max_sessions, dtype=torch.bool, device=self.device)
        mask[slots] = True
        self.mimi.reset_streaming(mask)
        self._mimi_mask = None

    def _set_mimi_mask(self, mask: torch.Tensor) -> None:
        if self._mimi_mask is None or not torch.equal(mask, self._mimi_mask):
            self._mimi_mask = mask
            self.mimi.set_exec_mask(mask.to(self.device))

    @torch.no_grad()
    def step(self, pcm: dict[int, np.ndarray]) -> list[FrameOutput]:
        """Advance the sessions in ``pcm`` (slot -> float32 ``[1920]`` at 24 kHz) by one frame."""
        if not pcm:
            return []
        batch = np.zeros((self.max_sessions, 1, FRAME_SIZE), dtype=np.float32)
        mask = torch.zeros(self.max_sessions, dtype=torch.bool)
        for slot, frame in pcm.items():
            if frame.shape != (FRAME_SIZE,):
                raise ValueError(f"slot {slot}: a frame is {FRAME_SIZE} samples, got shape {frame.shape}")
            batch[slot, 0] = frame
            mask[slot] = True
        self._set_mimi_mask(mask)
        with compile_policy(self.device):
            codes = self.mimi.encode(torch.from_numpy(batch).to(self.device))  # [B, 8, 1]
        first = [slot for slot in pcm if slot in self._first_frame_pending]
        if first:  # nothing of these slots was decoded yet, so resetting all their Mimi state is exact
            self._reset_mimi(first)
            self._first_frame_pending.difference_update(first)
        results = self.generator.step_batch(codes, list(pcm))
        decode_slots = [r.slot for r in results if r.audio is not None]
        pcm_out: dict[int, np.ndarray] = {}
        if decode_slots:
            tokens = torch.zeros(self.max_sessions, self.frontend.lm.dep_q, 1, dtype=torch.long)
            decode_mask = torch.zeros(self.max_sessions, dtype=torch.bool)
            for r in results:
                if r.audio is not None:
                    tokens[r.slot, :, 0] = torch.tensor(r.audio)
                    decode_mask[r.slot] = True
            self._set_mimi_mask(decode_mask)
            with compile_policy(self.device):
                audio = self.mimi.decode(tokens.to(self.device))[:, 0].float().cpu().numpy()
            pcm_out = {slot: audio[slot] for slot in decode_slots}
        silence = np.zeros(FRAME_SIZE, dtype=np.float32)
        return [FrameOutput(r, pcm_out.get(r.slot, silence)) for r in results]
