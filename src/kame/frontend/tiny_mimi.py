"""The tiny preset's Mimi, made to hear: a random encoder whose RVQ codebooks are fitted to speech.

No codec weights can be fetched offline, and moshi's default init leaves a random Mimi deaf: each
convolution shrinks the signal (PyTorch's default init keeps a third of the variance per layer) while
its bias does not, so every sound reaches the quantizer as nearly the same vector, and zero-filled
codebooks map it to code 0. Here the encoder's convolutions get a variance-keeping init (He normal, zero
bias, so silence encodes to the zero vector; the strided ones pool, see ``untrained_tiny_mimi``), and
each codebook is fitted by moshi's own k-means (``EuclideanCodebook._init_embedding``), stage by stage
on the residuals of the stages before it, over the tiny corpus's sentences spoken by the offline TTS
(every espeak-ng voice and Piper's joe) with silence between them. Codes then carry what was said. The
decoder stays random: the tiny front-end's voice is noise.

Speaking the corpus and fitting take about ten seconds, so it is done once by
``scripts/make_tiny_mimi.py`` and shipped as ``assets/tiny_mimi.safetensors`` (read by moshi's
``get_mimi``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from moshi.models import loaders as moshi_loaders
from moshi.models.compression import MimiModel
from moshi.quantization.vq import ResidualVectorQuantizer

from kame.frames import SAMPLE_RATE
from kame.frontend import presets
from kame.frontend.rng import seeded

logger = logging.getLogger(__name__)

ASSET = "assets/tiny_mimi.safetensors"
SEED = 1234
NUM_CODEBOOKS = 8


class TinyMimiError(RuntimeError):
    """The shipped tiny Mimi is missing or does not fit the tiny preset's shape."""


def asset_path() -> Path:
    return Path(str(resources.files("kame.frontend").joinpath(ASSET)))


@functools.lru_cache(maxsize=1)
def asset_digest() -> str:
    """A short hash of the shipped asset, so caches made with another tiny Mimi are not reused."""
    path = asset_path()
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "missing"


def load_tiny_mimi(device: torch.device | str = "cpu") -> MimiModel:
    """The shipped hearing tiny Mimi (moshi's constructor and loader)."""
    path = asset_path()
    if not path.is_file():
        raise TinyMimiError(
            f"{path} is missing: reinstall kame, or regenerate it with `python scripts/make_tiny_mimi.py`"
        )
    try:
        return moshi_loaders.get_mimi(
            str(path), presets.mimi_config("tiny"), device=device, num_codebooks=NUM_CODEBOOKS
        )
    except RuntimeError as exc:
        raise TinyMimiError(
            f"{path} does not fit the tiny Mimi config ({exc}); regenerate it with scripts/make_tiny_mimi.py"
        ) from exc


def untrained_tiny_mimi(seed: int = SEED) -> MimiModel:
    """The tiny Mimi with a variance-keeping random encoder and empty codebooks (CPU, float32).

    Every encoder convolution gets He-normal weights and zero bias; the strided ones (each follows an
    ELU) become a random mix of channels times a Hann window, i.e. they pool what the ELU rectified, so
    the frames follow each band's envelope rather than the waveform's phase: the same words said by
    another espeak-ng voice or at another rate land near each other.
    """
    with seeded(seed):
        return _random_tiny_mimi()


def _random_tiny_mimi() -> MimiModel:
    mimi = moshi_loaders.get_mimi(None, presets.mimi_config("tiny"), num_codebooks=NUM_CODEBOOKS)
    with torch.no_grad():
        for part in (mimi.encoder, mimi.downsample):
            for module in part.modules():
                if not isinstance(module, torch.nn.Conv1d):
                    continue
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    module.bias.zero_()
                if module.stride[0] > 1:
                    out_channels, in_channels, kernel = module.weight.shape
                    window = torch.hann_window(kernel + 2, periodic=False)[1:-1]
                    window = window / window.sum() * math.sqrt(kernel)
                    mix = torch.randn(out_channels, in_channels, 1) * math.sqrt(2.0 / in_channels)
                    module.weight.copy_(mix * window)
    return mimi


def corpus_sentences() -> list[str]:
    """The tiny corpus split into sentences (what the tiny tokenizer is trained on)."""
    text = resources.files("kame.frontend").joinpath("assets/tiny_corpus.txt").read_text()
    return [s.strip() for s in re.split(r"(?<=[.?!])\s+", text) if len(s.strip().split()) >= 2]


def speak_corpus(tts_specs: Iterable[str] = ("espeak", "piper"), sentences: list[str] | None = None):
    """Every sentence spoken by every voice of every engine (at one of a few rates, in turn), at 24 kHz,
    each followed by 0.4 s of silence so that pauses and word onsets are in the data."""
    from kame.audio.io import resample
    from kame.audio.tts import create_tts

    sentences = sentences if sentences is not None else corpus_sentences()
    rates = (0.9, 1.0, 1.15)
    audios = []
    for spec in tts_specs:
        engine = create_tts(spec)
        for v, voice in enumerate(engine.voices()):
            for i, sentence in enumerate(sentences):
                speech = engine.synthesize(sentence, voice=voice, rate=rates[(i + v) % len(rates)])
                audio = resample(speech.audio, speech.sample_rate, SAMPLE_RATE)
                audios.append(np.concatenate([audio, np.zeros(int(0.4 * SAMPLE_RATE), np.float32)]))
    return audios


@torch.no_grad()
def latents(mimi: MimiModel, audios: list[np.ndarray]) -> torch.Tensor:
    """The unquantized encoder outputs of every frame of every clip, [N, D]."""
    frames = []
    for audio in audios:
        wav = torch.from_numpy(np.asarray(audio, np.float32))[None, None]
        frames.append(mimi._encode_to_unquantized_latent(wav)[0].T)
    return torch.cat(frames)


def fit_codebooks(mimi: MimiModel, frames: torch.Tensor, seed: int = SEED) -> None:
    """Fit every RVQ stage by k-means to what the stages before it leave (moshi's k-means init)."""
    with seeded(seed):
        _fit_codebooks(mimi, frames)


@torch.no_grad()
def _fit_codebooks(mimi: MimiModel, frames: torch.Tensor) -> None:
    x = frames.T[None]  # [1, D, N], the quantizer's layout
    for rvq in (mimi.quantizer.rvq_first, mimi.quantizer.rvq_rest):
        assert isinstance(rvq, ResidualVectorQuantizer)
        residual = rvq.input_proj(x)
        for layer in rvq.vq.layers:
            codebook = layer._codebook
            codebook._initialized.fill_(0.0)
            codebook._cached_initialized = False
            codebook._init_embedding(residual[0].T.contiguous())
            codebook._embedding = None  # drop the cached centroids
            residual = residual - layer.decode(layer.encode(residual))


def make_tiny_mimi(tts_specs: Iterable[str] = ("espeak", "piper"), seed: int = SEED) -> MimiModel:
    """Build and fit the hearing tiny Mimi from scratch (what the shipped asset holds)."""
    mimi = untrained_tiny_mimi(seed)
    audios = speak_corpus(tts_specs)
    frames = latents(mimi, audios)
    logger.info("fitting the tiny Mimi's codebooks on %d frames of %d clips", len(frames), len(audios))
    fit_codebooks(mimi, frames, seed)
    return mimi
