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


PHRASES = (
    "Tokyo is large",
    "the red moon",
    "seventeen oxygen",
    "music and rain",
    "a blue triangle",
    "the heart pumps blood",
    "forty kilometers",
    "protons and neutrons",
    "sunny weather",
    "goodbye my friend",
)


def _heard(mimi, engine, text: str, voice: str | None = None, rate: float = 1.0) -> np.ndarray:
    """What the codes of a phrase say: their quantized vectors, silence frames dropped, unit length."""
    speech = engine.synthesize(text, voice=voice, rate=rate)
    wav = torch.from_numpy(resample(speech.audio, speech.sample_rate, 24000))[None, None]
    with torch.no_grad():
        frames = mimi.quantizer.decode(mimi.encode(wav))[0].T.numpy()
        silence = mimi.quantizer.decode(mimi.encode(torch.zeros(1, 1, 1920 * 3)))[0, :, -1].numpy()
    frames = frames[np.linalg.norm(frames - silence, axis=1) > 1e-3]
    return frames / np.linalg.norm(frames, axis=1, keepdims=True)


def _dtw(a: np.ndarray, b: np.ndarray) -> float:
    cost = 1 - a @ b.T
    total = np.full((len(a) + 1, len(b) + 1), np.inf)
    total[0, 0] = 0
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            total[i, j] = cost[i - 1, j - 1] + min(total[i - 1, j], total[i, j - 1], total[i - 1, j - 1])
    return float(total[-1, -1] / (len(a) + len(b)))


def _identified(queries: list[np.ndarray], references: list[np.ndarray]) -> float:
    distances = np.array([[_dtw(q, r) for r in references] for q in queries])
    return float((distances.argmin(axis=1) == np.arange(len(queries))).mean())


def test_codes_say_the_same_words_in_another_voice_or_rate():
    """Ten phrases said by espeak's en-us voice are told apart, by the codes alone (nearest by DTW), when
    said by another voice or faster (chance: 10 %), and so are Piper's; from one engine to the other
    is harder."""
    mimi = load_frontend("random:tiny").mimi
    espeak, piper = create_tts("espeak"), create_tts("piper")
    references = [_heard(mimi, espeak, p, "en-us") for p in PHRASES]
    assert _identified([_heard(mimi, espeak, p, "en-gb") for p in PHRASES], references) >= 0.8
    assert _identified([_heard(mimi, espeak, p, "en-us", rate=1.15) for p in PHRASES], references) >= 0.8
    assert _identified([_heard(mimi, piper, p) for p in PHRASES], references) >= 0.3
    piper_references = [_heard(mimi, piper, p) for p in PHRASES]
    assert _identified([_heard(mimi, piper, p, rate=1.15) for p in PHRASES], piper_references) >= 0.8


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
