"""The shipped ``--frontend tiny``: a trained tiny front-end that says what its oracles say.

It is made by ``scripts/train_tiny_default.py`` (``kame data build`` + ``kame train``) and shipped as
package data; these tests run it through ``kame infer`` as a user does, on real espeak speech.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kame.frontend import checkpoint
from kame.frontend.checkpoint import (
    CheckpointError,
    load_frontend,
    tiny_checkpoint_path,
    train_tiny_tokenizer,
)
from kame.frontend.tiny_mimi import load_tiny_mimi

ORACLE = "The capital of France is Paris."


def _kame(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_TORCH_COMPILE": "1"}
    return subprocess.run([sys.executable, "-m", "kame", *args], capture_output=True, text=True, env=env)


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory) -> Path:
    """A spoken question and two seconds of silence for the reply."""
    folder = tmp_path_factory.mktemp("question")
    wav = folder / "question.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Hello. What is the capital of France?"], check=True)
    import soundfile as sf

    audio, rate = sf.read(str(wav), dtype="float32")
    sf.write(str(wav), list(audio) + [0.0] * (3 * rate), rate)
    return wav


def _assistant_text(question_wav: Path, tmp_path: Path, script: Path | None, seed: int) -> str:
    argv = ["infer", str(question_wav), "--frontend", "tiny", "--output", str(tmp_path / f"a{seed}.wav")]
    argv += ["--seed", str(seed)] + (["--oracle-script", str(script)] if script else [])
    proc = _kame(*argv)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("assistant text: ")]
    return lines[0].removeprefix("assistant text: ") if lines else ""


def test_the_shipped_default_is_small_trained_and_shares_the_tiny_mimi_and_tokenizer():
    folder = tiny_checkpoint_path()
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 10 * 2**20
    shipped = load_frontend("tiny")
    random = load_frontend("random:tiny-wide")  # its shape (configs/train/tiny-default.yaml's init)
    assert shipped.lm_config == random.lm_config
    assert shipped.tokenizer.serialized_model_proto() == train_tiny_tokenizer()
    mimi = load_tiny_mimi()
    for key, value in mimi.state_dict().items():
        assert torch.equal(shipped.mimi.state_dict()[key], value), key
    differs = [k for k, v in random.lm.state_dict().items() if not torch.equal(v, shipped.lm.state_dict()[k])]
    assert "oracle_emb.weight" in differs and len(differs) == len(random.lm.state_dict())


def test_it_says_a_scripted_oracle_and_not_without_one(question_wav, tmp_path):
    script = tmp_path / "oracle.jsonl"
    script.write_text(
        json.dumps({"time": 2.4, "op": "reset", "text": "The capital"})
        + "\n"
        + json.dumps({"time": 2.5, "op": "append", "text": " of France is Paris."})
        + "\n"
    )
    expected = _words(ORACLE)
    with_oracle = [_words(_assistant_text(question_wav, tmp_path, script, seed)) for seed in (0, 1)]
    for said in with_oracle:
        assert len(expected & said) >= len(expected) - 1, said
    without = _words(_assistant_text(question_wav, tmp_path, None, 0))
    assert not {"paris", "france"} & without, without


def test_a_missing_shipped_default_is_an_error_not_random_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoint, "tiny_checkpoint_path", lambda: tmp_path / "absent")
    with pytest.raises(CheckpointError, match="random:tiny"):
        load_frontend("tiny")


def test_its_sampling_is_the_checkpoints_wherever_it_runs():
    """The shipped default samples its text at 0.2 (its config.json's lm_gen_config, written by
    scripts/train_tiny_default.py); an engine made without explicit sampling uses it too."""
    from kame.frontend.engine import FrontendEngine

    shipped = load_frontend("tiny")
    assert shipped.lm_gen_config == {"temp_text": 0.2}
    with FrontendEngine(shipped, 1) as engine:
        assert engine.generator.sampling.temp_text == 0.2 and engine.generator.sampling.top_k_text == 25
    with FrontendEngine(load_frontend("random:tiny"), 1) as engine:
        assert engine.generator.sampling.temp_text == 0.7  # moshi's default
