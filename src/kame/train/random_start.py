"""How a front-end trained from random weights starts, so that a small one learns to follow its oracle.

Measured on the toy oracle-following task (the tiny preset, one CPU core, ``bench/oracle_following.py``):
with moshi's plain random initialisation the LM never learnt to copy an oracle word in 2,700 steps. Its
16 audio embeddings sum to four times the norm of the oracle's, so the oracle is drowned in a 64-wide
stream, and the sound of each dialogue lets it memorise the training answers faster than it finds the
copy. Three changes at the start, all ordinary for a model trained from scratch, fix that:

- the oracle table starts as a copy of the text table: the released rule for upgrading plain Moshi
  (REFERENCE section 1), so an oracle token first means what the same text token means;
- the text output head starts tied to the text table, so an oracle embedding that attention moves to a
  position already scores its own token: the copy circuit has a head start;
- the audio tables start at zero, so sound comes in gradually once the audio is unmuted
  (``mute_audio_steps``) instead of as noise over what the model learnt while muted.
"""

from __future__ import annotations

import torch
from moshi.models.lm import LMModel


@torch.no_grad()
def prepare_random_start(lm: LMModel) -> None:
    """Apply the three starting choices above to a freshly initialised LM, in place."""
    lm.oracle_emb.weight.copy_(lm.text_emb.weight)
    lm.text_linear.weight.copy_(lm.text_emb.weight[: lm.text_linear.weight.shape[0]])
    for table in lm.emb:
        table.weight.zero_()
