"""Sampling settings: moshi's defaults, a checkpoint's lm_gen_config, then command-line overrides."""

from kame.frontend.generator import SamplingConfig


def test_checkpoint_config_then_flags():
    config = SamplingConfig.merged(
        {"temp": 0.6, "use_sampling": False, "top_k_text": 10, "other": 1}, temp=None
    )
    assert config == SamplingConfig(greedy=True, temp=0.6, top_k=250, temp_text=0.7, top_k_text=10)
    flagged = SamplingConfig.merged({"temp": 0.6}, temp=0.9, greedy=None)
    assert flagged.temp == 0.9 and not flagged.greedy
    assert flagged.lmgen_kwargs() == {
        "use_sampling": True,
        "temp": 0.9,
        "top_k": 250,
        "temp_text": 0.7,
        "top_k_text": 25,
    }
