"""Memory arithmetic of training the ``moshi-7b`` shape: parameters counted, bytes per parameter, activations.

The model is built on the meta device (no memory), LoRA adapters added by moshi's own
``replace_all_linear_with_lora`` there too, and every figure below is arithmetic on those counts:

- weights, gradients and AdamW states per regime: LoRA on one GPU (bf16 frozen base, float32 adapters
  and oracle embedding with their gradients and two AdamW moments), full FSDP2 over N GPUs (float32
  master weights, gradients and moments sharded N ways, plus the bf16 copies FSDP2 gathers: the root
  unit's for the whole step, two transformer layers at a time), and a full fine-tune on one GPU;
- activations per sample at ``--seq-len`` frames with activation checkpointing: each checkpointed layer
  keeps its bf16 input; one layer is recomputed at a time in the backward pass (its intermediates are
  estimated from the layer's shapes); the float32 logits of the text and audio heads and their
  gradients.

It measures nothing on a device: on a GPU, ``kame train`` logs ``frames_per_s`` and
``torch.cuda.max_memory_allocated`` is what to compare these estimates with::

    .venv/bin/python bench/train_memory.py --seq-len 512 --lora-rank 128 --gpus 8
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from moshi.modules.lora import replace_all_linear_with_lora

from kame.frontend import presets
from kame.frontend.checkpoint import build_lm
from kame.train.distributed import transformer_layers

GB = 1e9


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_intermediates(dim: int, hidden: int, heads: int, seq: int, positions: int) -> float:
    """bf16 bytes a transformer layer keeps for its backward pass, for ``positions`` rows of ``seq``."""
    rows = positions
    attention = rows * dim * (3 + 1 + 2)  # q, k, v; attention output; two norms' inputs
    scores = (positions // seq) * heads * seq * seq * 2  # softmax input and output (no flash kernel)
    gating = rows * (2 * hidden + hidden + hidden)  # linear_in output, activation, product
    return 2.0 * (attention + scores + gating)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="moshi-7b")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--lora-rank", type=int, default=128)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    config = presets.lm_config(args.preset)
    model = build_lm(config, device="meta", dtype=torch.bfloat16)
    total = count(model)
    layers = transformer_layers(model)
    temporal = list(model.transformer.layers)
    depformer = list(model.depformer.layers)
    per_layer = count(temporal[0])
    root = total - sum(count(layer) for layer in layers)
    oracle = model.oracle_emb.weight.numel()
    replace_all_linear_with_lora(model, args.lora_rank, 2.0, device=torch.device("meta"))
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n)

    dim, seq = config["dim"], args.seq_len
    hidden = 2 * int(config["hidden_scale"] * dim) // 3
    dep_dim, dep_q = config["depformer_dim"], config["dep_q"]
    dep_hidden = 2 * int(config["hidden_scale"] * dep_dim) // 3
    # per sample, with checkpointing on both transformers (bf16 activations, float32 logits)
    saved_inputs = 2.0 * (len(temporal) * seq * dim + len(depformer) * seq * dep_q * dep_dim)
    recompute = max(
        layer_intermediates(dim, hidden, config["num_heads"], seq, seq),
        layer_intermediates(dep_dim, dep_hidden, config["depformer_num_heads"], dep_q, seq * dep_q),
    )
    logits = 4.0 * 2 * seq * (config["text_card"] + dep_q * config["card"])  # values and their gradients
    per_sample = saved_inputs + recompute + logits
    no_checkpointing = 2.0 * seq * len(temporal) * (dim * 6 + 4 * hidden) + logits

    trained_lora = adapters + oracle
    lora_gpu = 2.0 * total + 16.0 * trained_lora  # bf16 base (oracle_emb's bf16 copy counted) + fp32 trained
    full_state = 16.0 * total  # fp32 weights 4 + gradients 4 + AdamW moments 8
    fsdp_gpu = full_state / args.gpus + 2.0 * root + 2 * 2.0 * per_layer + 4.0 * per_layer
    figures = {
        "preset": args.preset,
        "parameters": total,
        "temporal_layer_parameters": per_layer,
        "temporal_layers": len(temporal),
        "depformer_layers": len(depformer),
        "root_unit_parameters (embeddings, heads, norms, depformer inputs)": root,
        "oracle_emb_parameters": oracle,
        f"lora_rank_{args.lora_rank}_adapter_parameters": adapters,
        "bytes_per_parameter": {
            "bf16 weight": 2, "fp32 weight": 4, "fp32 gradient": 4, "AdamW exp_avg + exp_avg_sq (fp32)": 8,
            "trained fp32 parameter in all": 16,
        },
        "GB": {
            "full fine-tune, 1 GPU (fp32 weights + grads + AdamW)": round(full_state / GB, 1),
            "LoRA, 1 GPU: bf16 base + fp32 adapters and oracle_emb, grads, AdamW": round(lora_gpu / GB, 1),
            f"full FSDP2 over {args.gpus} GPUs, per GPU (shards + gathered bf16 root and 2 layers + fp32 "
            "reduce buffer)": round(fsdp_gpu / GB, 1),
            f"activations per sample at seq_len {seq}, checkpointing on": round(per_sample / GB, 2),
            f"activations per sample at seq_len {seq}, checkpointing off (temporal layers only)": round(
                no_checkpointing / GB, 2
            ),
        },
    }  # fmt: skip
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
