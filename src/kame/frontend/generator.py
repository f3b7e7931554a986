"""Batched streaming generation with one oracle track per session.

``OracleLMGen`` is moshi's ``LMGen`` whose model also reads this step's oracle tokens from a persistent
device buffer (so it works inside moshi's CUDA graphs). ``OracleGenerator`` manages the batch: sessions
take a slot, join and leave while others keep running (moshi's reset-by-mask and exec mask), and each
slot has its own state (step counter and oracle track).

Step timing: a session's step ``s`` consumes its user-audio codes of step ``s`` and the oracle token
scheduled at ``s``. As in the released KAME streaming, that is the text pad token on every step without
an oracle token, step 0 included, and the start-of-oracle token at step 0 when a reset comes before the
first step. The step returns nothing at step 0 and, from step 1 on, the text token of step ``s - 1`` with
the audio tokens of step ``s`` (moshi's one-step acoustic delay).

With the oracle stream off (``oracle_stream=False``) every step feeds -1, whose embedding is zero: the
model then computes exactly what stock Moshi computes. That is the default for plain Moshi weights when
nothing feeds oracles (``default_oracle_stream``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from moshi.models.lm import LMGen

from kame.errors import UserError
from kame.frontend.compile import compile_policy
from kame.frontend.model import ORACLE_ZERO, OracleLMModel
from kame.frontend.oracle_track import OracleTrack, SessionOracle, StreamingTextTokenizer, Tokenizer


class SamplingConfigError(UserError, ValueError):
    """An ``lm_gen_config`` key that moshi's ``LMGen`` does not take."""


# LMGen's own arguments that a checkpoint's lm_gen_config may set (everything but the model).
LMGEN_KEYS = tuple(
    name for name in inspect.signature(LMGen.__init__).parameters if name not in ("self", "lm_model")
)
_SAMPLING_KEYS = {"use_sampling": "greedy", "temp": "temp", "temp_text": "temp_text", "top_k": "top_k"}
_SAMPLING_KEYS["top_k_text"] = "top_k_text"


@dataclass
class SamplingConfig:
    """Moshi's sampling defaults; ``greedy`` makes a run deterministic; ``extra``: other LMGen settings."""

    greedy: bool = False
    temp: float = 0.8
    top_k: int = 250
    temp_text: float = 0.7
    top_k_text: int = 25
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. cfg_coef, as the checkpoint gives them

    @classmethod
    def merged(cls, lm_gen_config: dict, **overrides) -> SamplingConfig:
        """Defaults, then a checkpoint's whole ``lm_gen_config`` (moshi's key names), then non-None overrides.

        Every key moshi's ``LMGen`` accepts is passed on, as the released server does; an unknown key is an
        error that names it.
        """
        unknown = sorted(key for key in lm_gen_config if key not in LMGEN_KEYS)
        if unknown:
            raise SamplingConfigError(
                f"lm_gen_config has keys moshi's LMGen does not accept: {', '.join(unknown)}. "
                f"Accepted: {', '.join(LMGEN_KEYS)}. Fix or remove them in the checkpoint's config.json."
            )
        values: dict[str, Any] = {"extra": {}}
        for key, value in lm_gen_config.items():
            if key in _SAMPLING_KEYS:
                values[_SAMPLING_KEYS[key]] = (not value) if key == "use_sampling" else value
            elif key == "support_out_of_sync":
                continue  # the batched generator always needs it (sessions step out of sync)
            else:
                values["extra"][key] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def lmgen_kwargs(self) -> dict:
        return {
            **self.extra,
            "use_sampling": not self.greedy,
            "temp": self.temp,
            "top_k": self.top_k,
            "temp_text": self.temp_text,
            "top_k_text": self.top_k_text,
        }


def default_oracle_stream(frontend_has_trained_oracle: bool, has_oracle_source: bool) -> bool:
    """Whether to feed the oracle stream: always with an oracle source or trained weights.

    Plain Moshi weights (``oracle_emb`` only copied from ``text_emb``) with nothing feeding oracles run with
    the stream off, so they reproduce stock Moshi bit for bit.
    """
    return has_oracle_source or frontend_has_trained_oracle


class OracleLMGen(LMGen):
    """``LMGen`` that feeds an oracle token per batch item at every step."""

    lm_model: OracleLMModel

    def __init__(self, lm_model: OracleLMModel, **kwargs) -> None:
        kwargs.setdefault("support_out_of_sync", True)
        super().__init__(lm_model, **kwargs)

    def _init_streaming_state(self, batch_size: int):
        state = super()._init_streaming_state(batch_size)  # the LM streams now (cfg: 2 rows per item)
        self.lm_model.feed_oracle_stream()
        return state

    def set_oracle(self, tokens: torch.Tensor) -> None:
        """Write this step's oracle tokens ``[B]`` into the buffer the (graphed) model reads."""
        buffer = self.lm_model.oracle_buffer
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


@dataclass
class SlotState:
    """One slot's streaming state beside the model's: its session, step counter and oracle."""

    oracle: SessionOracle
    active: bool = False
    step: int = 0

    def reset(self) -> None:
        self.step = 0
        self.oracle.clear()


class OracleGenerator:
    """The front-end LM over ``max_sessions`` slots; not thread-safe (one stepping thread owns it).

    ``oracle_stream=False`` feeds -1 (a zero embedding) on every step: stock Moshi, bit for bit.
    """

    def __init__(
        self,
        lm: OracleLMModel,
        tokenizer: Tokenizer | None,
        max_sessions: int = 1,
        sampling: SamplingConfig | None = None,
        oracle_stream: bool = True,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.lm = lm
        self.tokenizer = tokenizer
        self.max_sessions = max_sessions
        self.sampling = sampling or SamplingConfig()
        self.oracle_stream = oracle_stream
        self.lm_gen = OracleLMGen(lm, **self.sampling.lmgen_kwargs())
        self._streaming = self.lm_gen.streaming(max_sessions)
        self.device = lm.device
        self.user_codebooks = lm.num_codebooks - lm.dep_q - 1
        self._slots = [SlotState(self._new_oracle()) for _ in range(max_sessions)]
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
        for slot, state in enumerate(self._slots):
            if not state.active:
                self._reset_slot(slot)
                state.active = True
                return slot
        raise SlotsFullError(f"all {self.max_sessions} front-end slots are in use")

    def leave(self, slot: int) -> None:
        """End a session: its slot is wiped so nothing of it reaches the next session."""
        self._slot(slot)
        self._reset_slot(slot)
        self._slots[slot].active = False

    def _reset_slot(self, slot: int) -> None:
        mask = torch.zeros(self.max_sessions, dtype=torch.bool)
        mask[slot] = True
        self.lm_gen.reset_streaming(mask.to(self.device))
        self._exec_key = None  # a reset turns the slot's exec mask on
        self._slots[slot].reset()

    def step_of(self, slot: int) -> int:
        """The index of the slot's next step."""
        return self._slot(slot).step

    def _slot(self, slot: int) -> SlotState:
        if not (0 <= slot < self.max_sessions) or not self._slots[slot].active:
            raise KeyError(f"slot {slot} has no session")
        return self._slots[slot]

    # -- oracle -----------------------------------------------------------------------------------

    def apply_oracle(self, slot: int, kind: str, text: str = "") -> int:
        """Apply an oracle operation (``reset``, ``append``, ``end``) before the slot's next step.

        A reset puts the start token at that very step (step 0 included). Returns how many tokens came
        too late for their step and were skipped. With the oracle stream off, operations are refused.
        """
        state = self._slot(slot)
        if not self.oracle_stream:
            raise RuntimeError(
                "this front-end runs with the oracle stream off (stock Moshi); "
                "start it with the oracle stream on to feed oracles"
            )
        return state.oracle.apply(kind, text, state.step)

    def oracle_reset(self, slot: int) -> None:
        """Start a new oracle at the slot's next step."""
        self.apply_oracle(slot, "reset")

    def oracle_append_text(self, slot: int, text: str) -> int:
        """Append oracle text; returns how many of its tokens were too late and skipped."""
        return self.apply_oracle(slot, "append", text)

    def oracle_append_ids(self, slot: int, token_ids: list[int]) -> int:
        state = self._slot(slot)
        return state.oracle.track.append(list(token_ids), state.step)

    def oracle_end(self, slot: int) -> int:
        """The current oracle's text is complete (its last word is no longer held back)."""
        return self.apply_oracle(slot, "end")

    def oracle_text(self, slot: int) -> str:
        return self._slots[slot].oracle.text

    def oracle_skipped(self, slot: int) -> int:
        return self._slots[slot].oracle.track.skipped

    # -- stepping ---------------------------------------------------------------------------------

    def step(self, user_codes: dict[int, torch.Tensor]) -> list[StepResult]:
        """Run one step for the sessions in ``user_codes`` (slot -> ``[8]`` codes); others stand still."""
        if not user_codes:
            return []
        codes = torch.zeros(self.max_sessions, self.user_codebooks, 1, dtype=torch.long)
        for slot, slot_codes in user_codes.items():
            self._slot(slot)
            codes[slot, :, 0] = slot_codes.view(-1)[: self.user_codebooks]
        return self.step_batch(codes, list(user_codes))

    def step_batch(self, codes: torch.Tensor, slots: list[int]) -> list[StepResult]:
        """Step ``slots`` with their rows of ``codes`` (``[max_sessions, 8, 1]``, on any device)."""
        states = {slot: self._slot(slot) for slot in slots}
        oracle = [self.lm.oracle_pad_token_id] * self.max_sessions
        for slot, state in states.items():
            oracle[slot] = state.oracle.token_at(state.step) if self.oracle_stream else ORACLE_ZERO
        key = tuple(sorted(slots))
        if key != self._exec_key:
            mask = torch.zeros(self.max_sessions, dtype=torch.bool)
            mask[list(key)] = True
            self.lm_gen.set_exec_mask(mask.to(self.device))
            self._exec_key = key
        self.lm_gen.set_oracle(torch.tensor(oracle, dtype=torch.long))
        with compile_policy(self.device):
            out = self.lm_gen.step(codes[:, : self.user_codebooks].to(self.device))
        if out is None:  # support_out_of_sync makes LMGen always return a tensor (-2: nothing yet)
            raise RuntimeError("LMGen returned no tokens; it must run with support_out_of_sync=True")
        rows = out[:, :, 0].tolist()  # one device-to-host copy for the whole batch
        users = codes[:, : self.user_codebooks, 0].tolist()
        results = []
        for slot, state in states.items():
            step = state.step
            state.step = step + 1
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
