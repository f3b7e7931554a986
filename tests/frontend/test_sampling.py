"""Sampling settings: moshi's defaults, a checkpoint's lm_gen_config, then command-line overrides."""

import pytest
from moshi.models.lm import LMGen

from kame.frontend.generator import SamplingConfig, SamplingConfigError


def test_checkpoint_config_then_flags():
    config = SamplingConfig.merged(
        {"temp": 0.6, "use_sampling": False, "top_k_text": 10, "cfg_coef": 1.5}, temp=None
    )
    assert config == SamplingConfig(
        greedy=True, temp=0.6, top_k=250, temp_text=0.7, top_k_text=10, extra={"cfg_coef": 1.5}
    )
    flagged = SamplingConfig.merged({"temp": 0.6}, temp=0.9, greedy=None)
    assert flagged.temp == 0.9 and not flagged.greedy
    assert flagged.lmgen_kwargs() == {
        "use_sampling": True,
        "temp": 0.9,
        "top_k": 250,
        "temp_text": 0.7,
        "top_k_text": 25,
    }


def test_every_lmgen_key_is_passed_on(tiny_frontend):
    """The whole lm_gen_config reaches moshi's LMGen, as the released server passes it."""
    config = SamplingConfig.merged({"check": True, "cfg_is_no_text": True, "temp_text": 0.5})
    gen = LMGen(tiny_frontend.lm, **config.lmgen_kwargs())
    assert gen.check is True and gen.cfg_is_no_text is True and gen.temp_text == 0.5


def test_unknown_lm_gen_config_keys_are_named():
    with pytest.raises(SamplingConfigError, match="does not accept: other, typo_temp"):
        SamplingConfig.merged({"temp": 0.6, "typo_temp": 1, "other": 2})
