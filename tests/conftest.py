"""Shared fixtures: one torch thread, a tiny random checkpoint in the released layout."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NO_TORCH_COMPILE", "1")  # CPU tests: moshi would spend minutes compiling

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A tiny random KAME checkpoint (config, LM with oracle_emb, small Mimi, SentencePiece)."""
    from kame.frontend.checkpoint import init_checkpoint

    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    init_checkpoint(folder, preset="tiny", seed=0)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_frontend(tiny_checkpoint):
    from kame.frontend.checkpoint import load_frontend

    return load_frontend(tiny_checkpoint, device="cpu")
