"""The tiny preset's Mimi hears: speech made by the offline TTS gets codes that follow what was said.

Measured through the real paths (a checkpoint written by ``init_checkpoint`` and loaded back, and the
in-memory ``random:tiny``), on sentences that are not in the corpus the codebooks were fitted on.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kame.audio.io import resample
from kame.audio.tts import create_tts
from kame.frontend.checkpoint import load_frontend
from kame.frontend.tiny_mimi import asset_path

SENTENCES = (
    "My neighbour painted the garden fence bright green on Sunday.",
    "Where did you leave the keys to the old blue car?",
    "Seven hundred and twelve apples were sold at the market.",
)
ROOT = Path(__file__).resolve().parents[2]


def _codes(mimi, spec: str) -> list[np.ndarray]:
    engine = create_tts(spec)
    out = []
    for sentence in SENTENCES:
        speech = engine.synthesize(sentence)
        wav = torch.from_numpy(resample(speech.audio, speech.sample_rate, 24000))[None, None]
        with torch.no_grad():
            out.append(mimi.encode(wav)[0].numpy())  # [8, T]
    return out


def _check_hears(codes: list[np.ndarray]) -> None:
    assert all(c.shape[0] == 8 for c in codes)
    distinct = [len(np.unique(np.concatenate([c[k] for c in codes]))) for k in range(8)]
    assert min(distinct) >= 16, f"distinct codes per codebook over three sentences: {distinct}"
    for i in range(len(codes)):
        for j in range(i + 1, len(codes)):
            n = min(codes[i].shape[1], codes[j].shape[1])
            same = (codes[i][:, :n] == codes[j][:, :n]).mean()
            assert same < 0.2, f"sentences {i} and {j} share {same:.0%} of their codes frame by frame"


@pytest.mark.parametrize("spec", ["espeak", "piper"])
def test_tiny_checkpoint_mimi_hears(tiny_checkpoint, spec):
    _check_hears(_codes(load_frontend(tiny_checkpoint).mimi, spec))


def test_random_tiny_mimi_hears_and_silence_is_not_speech():
    mimi = load_frontend("random:tiny").mimi
    codes = _codes(mimi, "espeak")
    _check_hears(codes)
    with torch.no_grad():
        silence = mimi.encode(torch.zeros(1, 1, 1920 * 10))[0].numpy()
    assert (silence == silence[:, :1]).all()  # one code per codebook for silence
    speech_frames = np.concatenate(codes, axis=1)
    is_silence_code = (speech_frames == silence[:, :1]).all(axis=0)
    assert is_silence_code.mean() < 0.3  # speech mostly gets other codes than silence


@pytest.mark.slow
def test_shipped_tiny_mimi_regenerates_exactly(tmp_path):
    """scripts/make_tiny_mimi.py rebuilds the shipped asset bit for bit (fixed seeds, repeatable TTS)."""
    out = tmp_path / "tiny_mimi.safetensors"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_tiny_mimi.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(asset_path().read_bytes()).hexdigest()
