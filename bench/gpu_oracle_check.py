"""On a GPU: does the oracle reach the model inside moshi's CUDA graphs?

moshi's ``LMGen`` replays ``forward_text`` from a CUDA graph that captured only its call arguments; an
oracle passed any other way would be frozen at capture time. This runs the same tiny model (float32)
with a changing oracle schedule on the GPU (CUDA graphs on) and on the CPU, and compares the text
logits step by step; it also checks that a different oracle does change the GPU logits.

    python bench/gpu_oracle_check.py
"""

from __future__ import annotations

import json

import torch

from kame.frontend.checkpoint import random_frontend
from kame.frontend.generator import OracleGenerator, SamplingConfig


def run(frontend, device: str, oracle_ids: list[int], steps: int = 30) -> torch.Tensor:
    lm = frontend.lm.to(device)
    logits: list[torch.Tensor] = []
    gen = OracleGenerator(lm, frontend.tokenizer, max_sessions=2, sampling=SamplingConfig(greedy=True))
    gen.lm_gen.on_text_logits_hook = lambda x: logits.append(x[:, 0, 0].float().cpu().clone())
    slot = gen.join()
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        if step == 4:
            gen.oracle_reset(slot)
            gen.oracle_append_ids(slot, oracle_ids)
        gen.step({slot: torch.randint(0, lm.card, (8,), generator=g)})
    gen.close()
    return torch.stack(logits)[:, slot]


def main() -> None:
    torch.set_grad_enabled(False)
    frontend = random_frontend("tiny", device="cpu", dtype=torch.float32)
    ids_a = list(range(10, 30))
    ids_b = list(range(300, 320))
    cpu_a = run(frontend, "cpu", ids_a)
    gpu_a = run(frontend, "cuda", ids_a)
    gpu_b = run(frontend, "cuda", ids_b)
    diff = (cpu_a - gpu_a).abs().amax(dim=-1)
    changed = (gpu_a - gpu_b).abs().amax(dim=-1)
    report = {
        "max_abs_diff_gpu_graphs_vs_cpu": float(diff.max()),
        "steps_where_other_oracle_changes_gpu_logits": [
            int(i) for i in torch.nonzero(changed > 1e-3).flatten()
        ],
        "ok": bool(diff.max() < 1e-3 and changed[:5].max() < 1e-6 and changed[5:].min() > 1e-3),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
