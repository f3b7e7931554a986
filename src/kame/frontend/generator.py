"""Batched streaming generation with one oracle track per session.

``OracleLMGen`` is moshi's ``LMGen`` whose model also reads this step's oracle tokens from a persistent
device buffer (so it works inside moshi's CUDA graphs). ``OracleGenerator`` manages the batch: sessions
take a slot, join and leave while others keep running (moshi's reset-by-mask and exec mask), and each
slot has its own step counter and oracle track.

Step timing: a session's step ``s`` consumes its user-audio codes of step ``s`` and the oracle token
scheduled at ``s`` (step 0 feeds every stream its initial token, and no oracle). It returns nothing at
step 0 and, from step 1 on, the text token of step ``s - 1`` with the audio tokens of step ``s``
(moshi's one-step acoustic delay).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from moshi.models.lm import LMGen

from kame.frontend.compile import compile_policy
from kame.frontend.model import ORACLE_ZERO, OracleLMModel
from kame.frontend.oracle_track import OracleTrack, SessionOracle, StreamingTextTokenizer, Tokenizer


@dataclass
class SamplingConfig:
    """Moshi's sampling defaults; ``greedy`` makes a run deterministic."""

    greedy: bool = False
    temp: float = 0.8
    top_k: int = 250
    temp_text: float = 0.7
    top_k_text: int = 25

    @classmethod
    def merged(cls, lm_gen_config: dict, **overrides) -> SamplingConfig:
        """Defaults, then a checkpoint's ``lm_gen_config`` (moshi's key names), then non-None overrides."""
        names = {"use_sampling": "greedy", "temp": "temp", "temp_text": "temp_text", "top_k": "top_k"}
        names["top_k_text"] = "top_k_text"
        values: dict = {}
        for key, value in lm_gen_config.items():
            if key in names:
                values[names[key]] = (not value) if key == "use_sampling" else value
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def lmgen_kwargs(self) -> dict:
        return {
            "use_sampling": not self.greedy,
            "temp": self.temp,
            "top_k": self.top_k,
            "temp_text": self.temp_text,
            "top_k_text": self.top_k_text,
        }


class OracleLMGen(LMGen):
    """``LMGen`` that feeds an oracle token per batch item at every step."""

    lm_model: OracleLMModel

    def __init__(self, lm_model: OracleLMModel, **kwargs) -> None:
        kwargs.setdefault("support_out_of_sync", True)
        super().__init__(lm_model, **kwargs)

    def _init_streaming_state(self, batch_size: int):
        state = super()._init_streaming_state(batch_size)
        rows = batch_size * (2 if self.cfg_coef != 1.0 else 1)
        self.lm_model.streaming_oracle = torch.full(
            (rows, 1), self.lm_model.oracle_pad_token_id, dtype=torch.long, device=self.lm_model.device
        )
        state.exit_stack.callback(setattr, self.lm_model, "streaming_oracle", None)
        return state

    def set_oracle(self, tokens: torch.Tensor) -> None:
        """Write this step's oracle tokens ``[B]`` into the buffer the (graphed) model reads."""
        buffer = self.lm_model.streaming_oracle
        if buffer is None:
            raise RuntimeError("set_oracle needs streaming mode: use `with lm_gen.streaming(batch_size):`")
        tokens = tokens.to(buffer.device, non_blocking=True).view(-1, 1)
        batch = tokens.shape[0]
        buffer[:batch].copy_(tokens)
        if buffer.shape[0] > batch:  # classifier-free guidance doubles the batch
            buffer[batch:].copy_(tokens)


@dataclass
class StepResult:
    """What one session's step fed and produced (the raw material of TOKENS.json)."""

    slot: int
    step: int
    user: list[int]
    oracle: int
    text: int | None
    audio: list[int] | None


class SlotsFullError(RuntimeError):
    """Every slot of the batch is taken."""


class OracleGenerator:
    """The front-end LM over ``max_sessions`` slots; not thread-safe (one stepping thread owns it)."""

    def __init__(
        self,
        lm: OracleLMModel,
        tokenizer: Tokenizer | None,
        max_sessions: int = 1,
        sampling: SamplingConfig | None = None,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.lm = lm
        self.tokenizer = tokenizer
        self.max_sessions = max_sessions
        self.sampling = sampling or SamplingConfig()
        self.lm_gen = OracleLMGen(lm, **self.sampling.lmgen_kwargs())
        self._streaming = self.lm_gen.streaming(max_sessions)
        self.device = lm.device
        self.user_codebooks = lm.num_codebooks - lm.dep_q - 1
        self._active = [False] * max_sessions
        self._steps = [0] * max_sessions
        self._oracles = [self._new_oracle() for _ in range(max_sessions)]
        self._exec_key: tuple[int, ...] | None = None  # slots the streaming exec mask holds, if known

    def _new_oracle(self) -> SessionOracle:
        track = OracleTrack(self.lm.oracle_start_token_id, self.lm.oracle_pad_token_id)
        return SessionOracle(track, StreamingTextTokenizer(self.tokenizer) if self.tokenizer else None)

    def close(self) -> None:
        """Leave streaming mode, releasing the KV caches (the model can then serve another generator)."""
        self._streaming.close()

    def __enter__(self) -> OracleGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sessions ---------------------------------------------------------------------------------

    def join(self) -> int:
        """Give a new session a clean slot (fresh KV cache, step 0, empty oracle)."""
        for slot, active in enumerate(self._active):
            if not active:
                self._reset_slot(slot)
                self._active[slot] = True
                return slot
        raise SlotsFullError(f"all {self.max_sessions} front-end slots are in use")

    def leave(self, slot: int) -> None:
        """End a session: its slot is wiped so nothing of it reaches the next session."""
        self._check(slot)
        self._reset_slot(slot)
        self._active[slot] = False

    def _reset_slot(self, slot: int) -> None:
        mask = torch.zeros(self.max_sessions, dtype=torch.bool)
        mask[slot] = True
        self.lm_gen.reset_streaming(mask.to(self.device))
        self._exec_key = None  # a reset turns the slot's exec mask on
        self._steps[slot] = 0
        self._oracles[slot].clear()

    def step_of(self, slot: int) -> int:
        """The index of the slot's next step."""
        return self._steps[slot]

    def _check(self, slot: int) -> None:
        if not (0 <= slot < self.max_sessions) or not self._active[slot]:
            raise KeyError(f"slot {slot} has no session")

    # -- oracle -----------------------------------------------------------------------------------

    def oracle_reset(self, slot: int) -> None:
        """Start a new oracle at the slot's next step (step 1 at the earliest: step 0 takes no oracle)."""
        self._check(slot)
        self._oracles[slot].reset(max(1, self._steps[slot]))

    def oracle_append_text(self, slot: int, text: str) -> int:
        """Append oracle text; returns how many of its tokens were too late and skipped."""
        self._check(slot)
        return self._oracles[slot].append_text(text, self._steps[slot])

    def oracle_append_ids(self, slot: int, token_ids: list[int]) -> int:
        self._check(slot)
        return self._oracles[slot].track.append(list(token_ids), self._steps[slot])

    def oracle_end(self, slot: int) -> int:
        """The current oracle's text is complete (its last word is no longer held back)."""
        self._check(slot)
        return self._oracles[slot].end(self._steps[slot])

    def oracle_text(self, slot: int) -> str:
        return self._oracles[slot].text

    def oracle_skipped(self, slot: int) -> int:
        return self._oracles[slot].track.skipped

    # -- stepping ---------------------------------------------------------------------------------

    def step(self, user_codes: dict[int, torch.Tensor]) -> list[StepResult]:
        """Run one step for the sessions in ``user_codes`` (slot -> ``[8]`` codes); others stand still."""
        if not user_codes:
            return []
        codes = torch.zeros(self.max_sessions, self.user_codebooks, 1, dtype=torch.long)
        for slot, slot_codes in user_codes.items():
            self._check(slot)
            codes[slot, :, 0] = slot_codes.view(-1)[: self.user_codebooks]
        return self.step_batch(codes, list(user_codes))

    def step_batch(self, codes: torch.Tensor, slots: list[int]) -> list[StepResult]:
        """Step ``slots`` with their rows of ``codes`` (``[max_sessions, 8, 1]``, on any device)."""
        for slot in slots:
            self._check(slot)
        oracle = [self.lm.oracle_pad_token_id] * self.max_sessions
        for slot in slots:
            step = self._steps[slot]
            oracle[slot] = self._oracles[slot].track.token_at(step) if step > 0 else ORACLE_ZERO
        key = tuple(sorted(slots))
        if key != self._exec_key:
            mask = torch.zeros(self.max_sessions, dtype=torch.bool)
            mask[list(key)] = True
            self.lm_gen.set_exec_mask(mask.to(self.device))
            self._exec_key = key
        self.lm_gen.set_oracle(torch.tensor(oracle, dtype=torch.long))
        with compile_policy(self.device):
            out = self.lm_gen.step(codes[:, : self.user_codebooks].to(self.device))
        assert out is not None  # support_out_of_sync: always a tensor, -2 where nothing was generated
        rows = out[:, :, 0].tolist()  # one device-to-host copy for the whole batch
        users = codes[:, : self.user_codebooks, 0].tolist()
        results = []
        for slot in slots:
            step = self._steps[slot]
            self._steps[slot] = step + 1
            row = rows[slot]
            generated = step >= 1 and min(row) >= 0
            results.append(
                StepResult(
                    slot=slot,
                    step=step,
                    user=users[slot],
                    oracle=oracle[slot],
                    text=row[0] if generated else None,
                    audio=row[1:] if generated else None,
                )
            )
        return results
