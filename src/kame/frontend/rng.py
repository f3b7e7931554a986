"""Repeatable randomness without seeding anyone's process: torch's random state is seeded inside a
block and restored after it (random initial weights, sampled inference with ``--seed``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Within the block, torch's CPU generator (and ``device``'s, on a GPU) starts from ``seed``; after
    it, they are as they were. ``seed=None``: nothing changes."""
    if seed is None:
        yield
        return
    device = torch.device(device)
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield
