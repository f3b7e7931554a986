"""Moshi's LM with KAME's fourth input stream, the oracle.

KAME changes one thing in Moshi: an input-only embedding table ``oracle_emb`` (``text_card + 1`` rows,
the last one being the start-of-oracle token) whose embedding is added to the text embedding at every
step. Index -1 is moshi's "zero token" and embeds to a zero vector, so a model fed only -1 oracles
computes exactly what plain Moshi computes.

Alignment (the same in training and streaming): ``oracle[:, t]`` is fed at the position that also
receives text frame ``t`` and user-audio frame ``t``, i.e. model position ``t + 1``. Position 0, where every
stream gets its initial token, gets no oracle (index -1). In streaming that is ``LMGen`` step ``t + 1``.
"""

from __future__ import annotations

import torch
from moshi.models.lm import LMModel, LMOutput
from moshi.models.lm_utils import ScaledEmbedding, _init_layer

from kame.frontend.compile import compile_policy

ORACLE_ZERO = -1  # embeds to a zero vector: "no oracle stream at all"


class OracleLMModel(LMModel):
    """``moshi.models.lm.LMModel`` plus the oracle embedding.

    In streaming, ``LMGen`` calls ``forward_text`` through a CUDA graph that only captures its call
    arguments, so the oracle token of the current step is read from a persistent buffer
    (``streaming_oracle``) that the generator updates in place before each step.
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
        self.streaming_oracle: torch.Tensor | None = None
        self._teacher_forced_oracle: torch.Tensor | None = None

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
    ) -> LMOutput:
        """Teacher-forced forward pass; ``oracle`` is ``[B, T]`` aligned with ``codes``' frames."""
        with compile_policy(codes.device):
            return self._forward(codes, condition_tensors, oracle)

    def _forward(self, codes: torch.Tensor, condition_tensors, oracle: torch.Tensor | None) -> LMOutput:
        if oracle is None:
            return super().forward(codes, condition_tensors)
        B, _, T = codes.shape
        if oracle.shape != (B, T):
            raise ValueError(
                f"oracle must be [B, T] = [{B}, {T}] beside codes of shape {tuple(codes.shape)}, "
                f"got {tuple(oracle.shape)}"
            )
        initial = torch.full((B, 1), ORACLE_ZERO, dtype=torch.long, device=oracle.device)
        # Position p sees frame p - 1; the last frame's oracle is never an input.
        positional = torch.cat([initial, oracle.long()], dim=1)[:, :T]
        self._teacher_forced_oracle = positional
        try:
            return super().forward(codes, condition_tensors)
        finally:
            self._teacher_forced_oracle = None

    def forward_text(
        self,
        sequence: torch.Tensor,
        sum_condition: torch.Tensor | None = None,
        cross_attention_src: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        oracle = self._teacher_forced_oracle
        if oracle is None and self.streaming_oracle is not None and self.is_streaming:
            oracle = self.streaming_oracle
        if oracle is None:
            return super().forward_text(sequence, sum_condition, cross_attention_src)
        return super().forward_text(
            sequence, _add(sum_condition, self.oracle_emb(oracle)), cross_attention_src
        )


def _add(sum_condition: torch.Tensor | None, oracle_embedding: torch.Tensor) -> torch.Tensor:
    """The oracle embedding is summed into the input like moshi's ``sum_condition`` does."""
    return oracle_embedding if sum_condition is None else sum_condition + oracle_embedding
