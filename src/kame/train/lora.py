"""LoRA fine-tuning with moshi's own adapters, and the two adapter files a LoRA run writes.

``add_adapters`` wraps every ``nn.Linear`` of the LM (attention projections, gating, depformer inputs,
output heads) in moshi's ``LoRALinear`` (``moshi.modules.lora.replace_all_linear_with_lora``, as
Kyutai's moshi-finetune does): ``lora_A`` keeps its Kaiming init, ``lora_B`` starts at zero, so the
first step computes exactly the base model. Adapters are float32 whatever the base's dtype.

Files (keys as moshi names them, ``<linear>.lora_A.weight`` / ``<linear>.lora_B.weight``):

- ``lora.safetensors``: the adapters plus every tensor trained fully beside them (always
  ``oracle_emb.weight``; every embedding with ``train: embeddings``). ``--frontend OUT`` reads it.
- ``moshi_lora.safetensors``: the same without the keys a stock ``moshi`` LM lacks (``oracle_emb.*``),
  the file that moshi's own ``--lora-weight`` loads into a stock Moshi (which has no oracle stream).
"""

from __future__ import annotations

import torch
from moshi.modules.lora import LoRALinear, replace_all_linear_with_lora

LORA_NAME = "lora.safetensors"
MOSHI_LORA_NAME = "moshi_lora.safetensors"
KAME_ONLY_PREFIXES = ("oracle_emb.",)


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def add_adapters(model: torch.nn.Module, rank: int, scaling: float, seed: int) -> None:
    """Adapters on every linear layer, seeded so that every process of a launch builds the same ones."""
    device = next(model.parameters()).device
    # on the meta device, so that LoRALinear's own (discarded) frozen_W costs nothing; the base layer
    # becomes frozen_W, and the two small matrices are then made for real
    replace_all_linear_with_lora(model, rank, scaling, device=torch.device("meta"), dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            a = torch.empty(rank, module.in_features, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(a, a=5**0.5, generator=generator)  # nn.Linear's own init
            module.lora_A.weight = torch.nn.Parameter(a.to(device))
            module.lora_B.weight = torch.nn.Parameter(
                torch.zeros(module.out_features, rank, dtype=torch.float32, device=device)
            )


def adapter_files(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(``lora.safetensors``, ``moshi_lora.safetensors``) from the trained tensors of a LoRA model:
    adapters plus the fully trained tensors."""
    kame = dict(state)
    moshi = {k: v for k, v in kame.items() if not k.startswith(KAME_ONLY_PREFIXES)}
    return kame, moshi
