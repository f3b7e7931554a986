"""Front-end step latency: KAME's oracle generator against stock moshi ``LMGen`` on the same weights.

Both run in one process on shared weights (a stock ``moshi.models.lm.LMModel`` is made to share the
oracle model's tensors), and their steps are interleaved in blocks so that clock drift, thermal state
and other load hit both alike. The figure that matters is the ratio: oracle support should cost < 5 %.

    python bench/frontend_step.py --preset tiny --device cpu --batch 1 2
    python bench/frontend_step.py --preset moshi-7b --device cuda --batch 1 8 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from moshi.models.lm import LMGen, LMModel

from kame.frames import FRAME_SIZE
from kame.frontend import presets
from kame.frontend.checkpoint import random_frontend
from kame.frontend.compile import compile_policy
from kame.frontend.generator import OracleGenerator, SamplingConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stock_twin(frontend) -> LMModel:
    """A stock moshi LM whose parameters are the oracle model's own tensors (no extra memory)."""
    plain = LMModel(device="meta", dtype=frontend.lm.dtype, **frontend.lm_config)
    state = {k: v for k, v in frontend.lm.state_dict().items() if not k.startswith("oracle_emb.")}
    plain.load_state_dict(state, assign=True)
    return plain.eval()


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_batch(frontend, stock: LMModel, batch: int, steps: int, warmup: int, block: int) -> dict:
    device = frontend.device
    lm = frontend.lm
    g = torch.Generator().manual_seed(batch)
    user = torch.randint(0, lm.card, (batch, 8, 1), generator=g)
    stock_gen = LMGen(stock, support_out_of_sync=True, **SamplingConfig().lmgen_kwargs())
    ours = OracleGenerator(lm, frontend.tokenizer, max_sessions=batch)
    slots = [ours.join() for _ in range(batch)]
    for slot in slots:  # every session has a live oracle, as in service
        ours.oracle_reset(slot)
        ours.oracle_append_ids(slot, torch.randint(4, lm.text_card, (4000,), generator=g).tolist())
    per_slot = {slot: user[i, :, 0] for i, slot in enumerate(slots)}
    user_device = user.to(device)
    times: dict[str, list[float]] = {"stock": [], "kame": []}
    with stock_gen.streaming(batch), compile_policy(device):

        def run(kind: str, n: int, record: bool) -> None:
            for _ in range(n):
                _sync(device)
                start = time.perf_counter()
                if kind == "stock":
                    stock_gen.step(user_device)
                else:
                    ours.step(per_slot)
                _sync(device)
                if record:
                    times[kind].append(time.perf_counter() - start)

        run("stock", warmup, False)
        run("kame", warmup, False)
        done = 0
        while done < steps:
            n = min(block, steps - done)
            run("stock", n, True)
            run("kame", n, True)
            done += n
    ours.close()
    stock_ms = statistics.median(times["stock"]) * 1e3
    kame_ms = statistics.median(times["kame"]) * 1e3
    return {
        "batch": batch,
        "stock_median_ms": round(stock_ms, 3),
        "stock_p90_ms": round(_percentile(times["stock"], 90) * 1e3, 3),
        "kame_median_ms": round(kame_ms, 3),
        "kame_p90_ms": round(_percentile(times["kame"], 90) * 1e3, 3),
        "overhead_pct": round(100 * (kame_ms / stock_ms - 1), 2),
        "steps": steps,
    }


def bench_mimi(frontend, batch: int, steps: int) -> dict:
    """Mimi streaming encode + decode of one frame for ``batch`` sessions (for the frame budget)."""
    device = frontend.device
    mimi = frontend.mimi
    pcm = torch.randn(batch, 1, FRAME_SIZE, device=device) * 0.1
    times = []
    with mimi.streaming(batch), compile_policy(device), torch.no_grad():
        for i in range(steps + 5):
            _sync(device)
            start = time.perf_counter()
            codes = mimi.encode(pcm)
            mimi.decode(codes)
            _sync(device)
            if i >= 5:
                times.append(time.perf_counter() - start)
    return {"batch": batch, "mimi_median_ms": round(statistics.median(times) * 1e3, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", choices=presets.PRESETS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--block", type=int, default=20, help="steps per interleaved block")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mimi", action="store_true", help="also time Mimi encode+decode per frame")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    load_start = time.perf_counter()
    frontend = random_frontend(args.preset, device=device)
    stock = _stock_twin(frontend)
    info = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(frontend.lm.dtype),
        "threads": args.threads,
        "lm_parameters": sum(p.numel() for p in frontend.lm.parameters()),
        "build_s": round(time.perf_counter() - load_start, 1),
    }
    print(json.dumps(info))
    rows = []
    for batch in args.batch:
        row = bench_batch(frontend, stock, batch, args.steps, args.warmup, args.block)
        if args.mimi:
            row.update(bench_mimi(frontend, batch, min(args.steps, 50)))
        if device.type == "cuda":
            row["max_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'B':>4} {'stock ms':>10} {'kame ms':>10} {'overhead':>9}")
    for row in rows:
        stock, kame = row["stock_median_ms"], row["kame_median_ms"]
        print(f"{row['batch']:>4} {stock:>10.2f} {kame:>10.2f} {row['overhead_pct']:>8.1f}%")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"info": info, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
