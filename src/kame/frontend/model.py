"""Moshi's LM with KAME's fourth input stream, the oracle.

KAME changes one thing in Moshi: an input-only embedding table ``oracle_emb`` (``text_card + 1`` rows,
the last one being the start-of-oracle token) whose embedding is added to the text embedding at every
step. Index -1 is moshi's "zero token" and embeds to a zero vector, so a model fed only -1 oracles
computes exactly what plain Moshi computes.

Alignment, one convention for training and streaming (REFERENCE section 7 and 8):

- Training: ``oracle[:, f]`` is data frame ``f``'s oracle token (the same index as ``codes[..., f]``). It
  is fed at model position ``f + 1``, the first position that has heard audio frame ``f`` (position
  ``p`` takes frame ``p - 1`` as input and predicts text frame ``p``).
- Streaming: step ``s`` is position ``s``. moshi never reads the codes given at step 0 and the servers
  reset Mimi after the first frame, so step ``s`` has heard input frame ``s``. An event during input
  frame ``s`` is applied before step ``s``: in both, an oracle is fed where the model has just heard the
  audio it was made from.
- Position/step 0: the text pad id (3), which the released KAME streaming feeds on every step without
  an oracle token, step 0 included (a reset queued before the first step puts the start token there;
  data events always land at position 1 or later). The released *training* forward put the text
  initial token at position 0 instead, disagreeing with its own streaming; we follow the streaming,
  which is what a deployed model sees.
- A row of all ``-1`` is the oracle-off mode: ``-1`` at position 0 too, so it computes stock Moshi.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from moshi.models.lm import LMModel, LMOutput
from moshi.models.lm_utils import ScaledEmbedding, _init_layer
from moshi.modules.streaming import State

from kame.frontend.compile import compile_policy

ORACLE_ZERO = -1  # embeds to a zero vector: "no oracle stream at all"


@dataclass
class OracleLMState(State):
    """The LM's streaming state (moshi's ``State``) plus the oracle buffer of the current step.

    ``oracle`` is ``[B, 1]``, one token per batch row, created once when a generator starts feeding the
    oracle stream (``feed_oracle_stream``) and then only updated in place, so that a CUDA graph captured
    on it reads each step's tokens. ``None``: nothing feeds an oracle, the LM computes plain Moshi.
    """

    oracle: torch.Tensor | None = None


class OracleLMModel(LMModel):
    """``moshi.models.lm.LMModel`` plus the oracle embedding.

    In streaming, ``LMGen`` calls ``forward_text`` through a CUDA graph that only captures its call
    arguments, so the oracle token of the current step is read from the persistent buffer in the
    streaming state (``OracleLMState.oracle``) that the generator updates in place before each step.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.oracle_emb = ScaledEmbedding(
            self.text_card + 1,
            self.dim,
            norm=kwargs.get("norm_emb", False),
            zero_idx=self.zero_token_id,
            device=kwargs.get("device"),
            dtype=kwargs.get("dtype"),
            demux_second_stream=kwargs.get("demux_second_text_stream", False),
        )
        if self.oracle_emb.weight.device.type != "meta":
            _init_layer(self.oracle_emb)
        self._teacher_forced_oracle: torch.Tensor | None = None
        self._text_only = False
        self._depformer_positions: torch.Tensor | None = None

    def _init_streaming_state(self, batch_size: int) -> OracleLMState:
        return OracleLMState(batch_size, next(iter(self.parameters())).device)

    def feed_oracle_stream(self) -> torch.Tensor:
        """Start feeding the oracle stream in this streaming session; returns its ``[B, 1]`` buffer
        (pad tokens until written)."""
        state = self._streaming_state
        if not isinstance(state, OracleLMState):
            raise RuntimeError("the oracle stream needs streaming mode: use `with lm.streaming(batch_size):`")
        if state.oracle is None:
            state.oracle = torch.full(
                (state.batch_size, 1), self.oracle_pad_token_id, dtype=torch.long, device=state.device
            )
        return state.oracle

    @property
    def oracle_buffer(self) -> torch.Tensor | None:
        """This streaming session's oracle buffer, if an oracle stream is fed."""
        state = self._streaming_state
        return state.oracle if isinstance(state, OracleLMState) else None

    @property
    def oracle_start_token_id(self) -> int:
        """Start-of-oracle token: the text "initial" token, ``text_card``."""
        return self.text_initial_token_id

    @property
    def oracle_pad_token_id(self) -> int:
        """Fed on every step without an oracle token (the text pad token)."""
        return self.text_padding_token_id

    def forward(  # type: ignore[override]
        self,
        codes: torch.Tensor,
        condition_tensors=None,
        oracle: torch.Tensor | None = None,
        *,
        text_only: bool = False,
        depformer_positions: torch.Tensor | None = None,
    ) -> LMOutput:
        """Teacher-forced forward pass; ``oracle`` is ``[B, T]``, frame-aligned with ``codes``.

        ``text_only`` skips the depformer, for a loss with no audio term (the trainer's muted steps and
        ``audio_weight: 0``; about a third of a tiny step's time): ``logits`` is then
        ``[B, dep_q, T, 0]`` and ``mask`` all false, so no audio position is ever scored.

        ``depformer_positions`` (sorted indices into the ``T`` positions) runs the depformer on those
        positions only: it reads each position on its own, so their logits are exactly the full pass's,
        and the others are NaN and masked out. A trainer that scores audio on a random share of the
        positions pays that share of the depformer's cost (most of an unmuted tiny step)."""
        self._text_only = text_only
        self._depformer_positions = depformer_positions
        try:
            with compile_policy(codes.device):
                output = self._forward(codes, condition_tensors, oracle)
        finally:
            self._text_only = False
            self._depformer_positions = None
        if text_only:
            output = LMOutput(
                output.logits, torch.zeros_like(output.mask), output.text_logits, output.text_mask
            )
        elif depformer_positions is not None:
            scored = output.mask & ~torch.isnan(output.logits[..., 0])
            output = LMOutput(output.logits, scored, output.text_logits, output.text_mask)
        return output

    def _forward(self, codes: torch.Tensor, condition_tensors, oracle: torch.Tensor | None) -> LMOutput:
        if oracle is None:
            return super().forward(codes, condition_tensors)
        B, _, T = codes.shape
        if oracle.shape != (B, T):
            raise ValueError(
                f"oracle must be [B, T] = [{B}, {T}] beside codes of shape {tuple(codes.shape)}, "
                f"got {tuple(oracle.shape)}"
            )
        oracle = oracle.long()
        oracle_off = (oracle == ORACLE_ZERO).all(dim=1, keepdim=True)
        first = torch.where(oracle_off, ORACLE_ZERO, self.oracle_pad_token_id)
        # Position p is fed frame p - 1's oracle; the last frame's oracle is never an input.
        self._teacher_forced_oracle = torch.cat([first, oracle[:, : T - 1]], dim=1)
        try:
            return super().forward(codes, condition_tensors)
        finally:
            self._teacher_forced_oracle = None

    def forward_depformer_training(
        self, sequence: torch.Tensor, transformer_out: torch.Tensor
    ) -> torch.Tensor:
        if self._text_only:
            batch, _, steps = sequence.shape
            return transformer_out.new_zeros(batch, self.dep_q, steps, 0)
        positions = self._depformer_positions
        if positions is None:
            return super().forward_depformer_training(sequence, transformer_out)
        part = super().forward_depformer_training(sequence[:, :, positions], transformer_out[:, positions])
        batch, _, steps = sequence.shape
        logits = part.new_full((batch, self.dep_q, steps, part.shape[-1]), float("nan"))
        logits[:, :, positions] = part
        return logits

    def forward_text(
        self,
        sequence: torch.Tensor,
        sum_condition: torch.Tensor | None = None,
        cross_attention_src: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        oracle = self._teacher_forced_oracle
        if oracle is None:
            oracle = self.oracle_buffer
        if oracle is None:
            return super().forward_text(sequence, sum_condition, cross_attention_src)
        return super().forward_text(
            sequence, _add(sum_condition, self.oracle_emb(oracle)), cross_attention_src
        )


def _add(sum_condition: torch.Tensor | None, oracle_embedding: torch.Tensor) -> torch.Tensor:
    """The oracle embedding is summed into the input like moshi's ``sum_condition`` does."""
    return oracle_embedding if sum_condition is None else sum_condition + oracle_embedding
