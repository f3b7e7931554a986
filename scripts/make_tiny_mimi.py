"""Regenerate ``src/kame/frontend/assets/tiny_mimi.safetensors``, the tiny preset's hearing Mimi.

A fixed-seed random Mimi of the tiny shape with a variance-keeping encoder init, whose RVQ codebooks are
fitted by k-means, stage by stage, to its encoder's outputs over the tiny corpus spoken by espeak-ng's
voices and Piper's joe (see ``kame.frontend.tiny_mimi``). Run from the repository root:

    python scripts/make_tiny_mimi.py            # writes the asset and prints its code usage
    python scripts/make_tiny_mimi.py --out X    # writes elsewhere (e.g. to compare with the shipped one)
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from kame.frontend import tiny_mimi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=tiny_mimi.asset_path())
    parser.add_argument("--seed", type=int, default=tiny_mimi.SEED)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    mimi = tiny_mimi.make_tiny_mimi(seed=args.seed)
    state = {k: v.detach().contiguous().cpu() for k, v in mimi.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out))
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()[:16]
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1024:.0f} KiB, sha256 {digest}) in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
