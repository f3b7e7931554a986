"""The training loss of REFERENCE.md section 3, from moshi's own ``LMOutput``.

- Text: cross-entropy over the valid text positions, ``mean over non-pad + text_pad_weight x mean over
  pad``. **Pad rule: only id 3 (moshi's ``existing_text_padding_id``) counts as pad**, as in the released
  KAME trainer; the end-of-padding id 0 marks where a word starts, so it is weighted as a word token.
  (Kyutai's moshi-finetune counts {0, 3} as pad.) A batch with no token of one kind leaves that mean out.
  Opt-in ``text_word_weight``: within the non-pad mean, a target that begins a word (a tokenizer piece
  starting with U+2581) weighs that much, the rest 1. A front-end that copies its oracle gets a word's
  later pieces nearly always right once it has the first; its mistakes are the first piece (which word
  comes next), so that is where the weight goes.
- Audio: cross-entropy over the model's ``dep_q`` codebooks, a count-weighted mean in which the semantic
  (first) codebook weighs ``semantic_weight`` and the acoustic ones ``acoustic_weight``.
- ``loss = text_loss + audio_weight x audio_loss``.

Masked positions of ``LMOutput`` are NaN (moshi fills them so): they are selected away with the mask,
never multiplied by zero. Positions whose target is moshi's zero token (-1, past a record's end) are
masked by moshi itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from moshi.models.lm import LMOutput

TEXT_PAD = 3


@dataclass(frozen=True)
class LossWeights:
    text_pad_weight: float = 0.5
    text_word_weight: float = 1.0
    semantic_weight: float = 100.0
    acoustic_weight: float = 1.0
    audio_weight: float = 1.0


@dataclass
class Losses:
    loss: torch.Tensor
    text_loss: torch.Tensor
    audio_loss: torch.Tensor


def word_starts(tokenizer: Any, size: int) -> torch.Tensor:
    """``[size]`` bools: which text ids are pieces that begin a word (sentencepiece's U+2581 prefix)."""
    return torch.tensor([tokenizer.id_to_piece(i).startswith("\u2581") for i in range(size)])


def text_loss(
    output: LMOutput,
    text: torch.Tensor,
    pad_weight: float,
    pad_id: int = TEXT_PAD,
    word_weight: float = 1.0,
    word_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """``text`` is ``[B, T]``, the targets (codes[:, 0]); ``word_start`` (from :func:`word_starts`) is
    needed when ``word_weight`` is not 1."""
    mask = output.text_mask[:, 0]
    logits = output.text_logits[:, 0][mask].float()
    targets = text[mask]
    ce = F.cross_entropy(logits, targets, reduction="none")
    is_pad = targets == pad_id
    total = ce.new_zeros(())
    if (~is_pad).any():
        if word_weight == 1.0:
            total = total + ce[~is_pad].mean()
        else:
            if word_start is None:
                raise ValueError("text_loss: word_weight needs word_start, the word-start ids")
            kept = targets[~is_pad]
            weight = torch.where(word_start.to(kept.device)[kept.long()], float(word_weight), 1.0)
            total = total + (ce[~is_pad] * weight).sum() / weight.sum()
    if is_pad.any():
        total = total + pad_weight * ce[is_pad].mean()
    return total


def audio_loss(
    output: LMOutput, audio: torch.Tensor, semantic_weight: float, acoustic_weight: float
) -> torch.Tensor:
    """``audio`` is ``[B, dep_q, T]``, the model's own codebooks (the targets of ``output.logits``).

    One masked selection over every codebook: a selection per codebook made autograd fill a zero
    tensor of the whole logits' size for each of them, over half of a tiny training step."""
    mask = output.mask
    if not mask.any():
        return output.logits.new_zeros((), dtype=torch.float32)
    ce = F.cross_entropy(output.logits[mask].float(), audio[mask], reduction="none")
    per_codebook = torch.full((mask.shape[1],), float(acoustic_weight), device=ce.device)
    per_codebook[0] = semantic_weight
    weight = per_codebook.view(1, -1, 1).expand_as(mask)[mask]
    return (ce * weight).sum() / weight.sum()


def compute_losses(
    output: LMOutput,
    codes: torch.Tensor,
    dep_q: int,
    weights: LossWeights,
    word_start: torch.Tensor | None = None,
) -> Losses:
    """Losses of a batch; ``codes`` is the ``[B, 1 + n_q, T]`` tensor given to the model."""
    text = text_loss(
        output, codes[:, 0], weights.text_pad_weight, word_weight=weights.text_word_weight,
        word_start=word_start,
    )  # fmt: skip
    audio = audio_loss(output, codes[:, 1 : 1 + dep_q], weights.semantic_weight, weights.acoustic_weight)
    return Losses(text + weights.audio_weight * audio, text, audio)
