"""Model shapes: ``tiny`` for tests, ``tiny-wide`` for the shipped CPU front-end, ``moshi-7b`` for
benchmarks.

Configs are plain dicts of constructor arguments, as in moshi's ``config.json`` convention. The 7B shape
is moshi's own (``moshi.models.loaders._lm_kwargs``/``_mimi_config``), read rather than copied so that
it can never drift from what the released weights expect.
"""

from __future__ import annotations

import copy
from typing import Any

from moshi.models import loaders as moshi_loaders

MOSHI_DELAYS = [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]

# A Mimi with the real frame geometry (24 kHz, 1920-sample frames at 12.5 Hz, 8 codebooks) but about 165
# thousand parameters, so that a CPU encodes and decodes far faster than real time. Its weights are the
# shipped ``assets/tiny_mimi.safetensors`` (see ``kame.frontend.tiny_mimi``): changing this shape means
# regenerating that file with ``scripts/make_tiny_mimi.py``.
TINY_MIMI_CONFIG: dict[str, Any] = {
    "sample_rate": 24000,
    "channels": 1,
    "frame_rate": 12.5,
    "seanet": {
        "channels": 1,
        "dimension": 32,
        "causal": True,
        "n_filters": 4,
        "n_residual_layers": 1,
        "activation": "ELU",
        "compress": 2,
        "dilation_base": 2,
        "disable_norm_outer_blocks": 0,
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 3,
        "norm": "none",
        "pad_mode": "constant",
        "ratios": [8, 6, 5, 4],
        "true_skip": True,
    },
    "quantizer": {"dimension": 16, "n_q": 8, "bins": 256, "input_dimension": 32, "output_dimension": 32},
    "transformer": {
        "d_model": 32,
        "num_heads": 2,
        "num_layers": 1,
        "causal": True,
        "layer_scale": 0.01,
        "context": 250,
        "conv_layout": True,
        "max_period": 10000,
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "dim_feedforward": 64,
        "input_dimension": 32,
        "output_dimensions": [32],
    },
}

# Moshi's layout (16 streams, 8 in the depformer, the same delays and special tokens), shrunk. Two heads
# of 32, not four of 16: copying an oracle word means matching it among ~1,000 tokens and carrying its
# identity through one head, and a 16-wide head (8 RoPE pairs, 3 of them turning within a sentence) did
# both poorly. On the toy task (bench/oracle_following.py, tiny-2min.yaml) two heads said more key words
# in each of four paired runs (two data builds x two seeds; README).
TINY_LM_CONFIG: dict[str, Any] = {
    "dim": 64,
    "text_card": 0,  # set to the tokenizer's size when the checkpoint is created
    "existing_text_padding_id": 3,
    "n_q": 16,
    "dep_q": 8,
    "card": TINY_MIMI_CONFIG["quantizer"]["bins"],
    "num_heads": 2,
    "num_layers": 2,
    "hidden_scale": 4.125,
    "causal": True,
    "layer_scale": None,
    "context": 750,
    "max_period": 10000,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "depformer_dim": 32,
    "depformer_dim_feedforward": 132,
    "depformer_num_heads": 2,
    "depformer_num_layers": 1,
    "depformer_layer_scale": None,
    "depformer_multi_linear": True,
    "depformer_context": 8,
    "depformer_max_period": 10000,
    "depformer_gating": "silu",
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "delays": MOSHI_DELAYS,
}

# The shipped ``--frontend tiny`` (``configs/train/tiny-default.yaml``): the tiny layout at twice the width,
# with the tiny Mimi and tokenizer. Following an open-vocabulary oracle live it beat the tiny shape on the
# same data, 72.1 against 61.6 % of the oracle's first ten words (bench/default_following.py). On the toy
# task's closed vocabulary it did not: 78.7 % of key words in 2 CPU minutes (1,900 steps) against the
# tiny preset's 81.3 % (2,200 steps; bench/oracle_following.py; both then with heads 16 wide).
TINY_WIDE_LM_CONFIG: dict[str, Any] = {**TINY_LM_CONFIG, "dim": 128, "num_heads": 4}  # the shipped shape

TINY_TOKENIZER_SIZE = 1000

PRESETS = ("tiny", "tiny-wide", "moshi-7b")
TINY_FAMILY = ("tiny", "tiny-wide")  # the presets with the shipped tiny Mimi and tokenizer


def _shape(preset: str) -> tuple[dict[str, Any], dict[str, Any]]:
    shapes = {
        "tiny": (TINY_LM_CONFIG, TINY_MIMI_CONFIG),
        "tiny-wide": (TINY_WIDE_LM_CONFIG, TINY_MIMI_CONFIG),
        "moshi-7b": (moshi_loaders._lm_kwargs, moshi_loaders._mimi_config),
    }
    if preset not in shapes:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return shapes[preset]


def lm_config(preset: str) -> dict[str, Any]:
    """LM constructor arguments of a preset (a fresh copy)."""
    return copy.deepcopy(_shape(preset)[0])


def mimi_config(preset: str) -> dict[str, Any]:
    """Mimi constructor config of a preset (a fresh copy)."""
    return copy.deepcopy(_shape(preset)[1])
