"""The processes of a ``torchrun`` launch: process group, FSDP2 sharding, reductions, full state dicts.

One process (no ``WORLD_SIZE`` in the environment, or 1) needs none of this and runs as before. Under
``torchrun --nproc-per-node N -m kame.train ...``:

- CPU runs use gloo, CUDA runs NCCL with process ``LOCAL_RANK`` on ``cuda:LOCAL_RANK``; the device mesh
  is always built explicitly for the run's device type (so a CPU run stays on CPU when CUDA is visible).
- ``shard`` applies FSDP2 (``fully_shard``) to every transformer layer of the temporal transformer and
  the depformer, then to the root (embeddings, output heads, norms). Frozen and trainable parameters may
  share a unit, so LoRA needs no special wrapping.
- FSDP2 turns each sharded module into an instance of a new class ``(FSDPModule, cls)``. moshi's modules
  derive from ``abc.ABC`` first, and CPython (3.11, python/cpython#79229) refuses that ``__class__``
  assignment ("object layout differs"); the same class with the bases the other way round,
  ``(cls, FSDPModule)``, is accepted and behaves the same (the two share no method names), so
  ``_register_fsdp_class`` puts that class in FSDP2's class cache before sharding.
- FSDP2 on gloo was reported to sum gradients where it should average them (pytorch#162338: its AVG
  reduce-scatter on gloo). On gloo every unit is therefore told to reduce with SUM and divide by the
  world size itself (``set_force_sum_reduction_for_comms``), which is right whether or not a torch
  has the bug. (With torch 2.9.1 here, the default path also gave the one-process gradient norm.) The
  multi-process tests check gradient norms and losses against one process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class World:
    """This process's place in the launch (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    mesh: Any = None  # torch.distributed.device_mesh.DeviceMesh when distributed

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 does the block first (filling caches, creating files), then the others."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """The mean over processes of each value (every process passes the same keys)."""
        if not self.distributed:
            return dict(values)
        keys = list(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.tolist(), strict=True)}

    def total(self, value: float, device: torch.device) -> float:
        if not self.distributed:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor.item())

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_world(device: str) -> tuple[World, torch.device]:
    """The process group of a torchrun launch and this process's device; one process: no group."""
    world_size = launched_world_size()
    wanted = torch.device(device)
    if world_size <= 1:
        return World(), wanted
    from torch.distributed.device_mesh import init_device_mesh

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if wanted.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device is visible; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"process {local_rank} of this node has no GPU: {torch.cuda.device_count()} visible, "
                "lower --nproc-per-node"
            )
        wanted = torch.device("cuda", local_rank)
        torch.cuda.set_device(wanted)
        backend = "nccl"
    elif wanted.type == "cpu":
        backend = "gloo"
    else:
        raise RuntimeError(f"--device {device}: distributed training runs on cpu (gloo) or cuda (NCCL)")
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    mesh = init_device_mesh(wanted.type, (world_size,))
    return World(rank, world_size, local_rank, backend, mesh), wanted


def transformer_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The FSDP2 units below the root: each layer of the temporal transformer and of the depformer."""
    layers: list[torch.nn.Module] = []
    for name in ("transformer", "depformer"):
        stack = getattr(model, name, None)
        if stack is not None:
            layers.extend(stack.layers)
    return layers


def _register_fsdp_class(cls: type) -> None:
    """Give FSDP2 a class for ``cls`` that CPython lets a moshi module be assigned to (see above)."""
    from torch.distributed.fsdp import FSDPModule

    try:
        from torch.distributed.fsdp._fully_shard import _fully_shard as internals

        cache = internals.cls_to_fsdp_cls
    except (ImportError, AttributeError) as exc:  # another torch: fail loudly rather than misbehave
        raise RuntimeError(
            f"this torch ({torch.__version__}) has no FSDP2 class cache; kame's FSDP2 sharding of moshi "
            "modules was written for torch 2.9"
        ) from exc
    if cls in cache:
        return

    def new(kind: type, *args: Any, **kwargs: Any) -> Any:  # a fresh instance is of the plain class
        self = cls.__new__(cls)
        self.__init__(*args, **kwargs)
        return self

    cache[cls] = type(
        f"FSDP{cls.__name__}",
        (cls, FSDPModule),
        {"__new__": new, "__deepcopy__": internals._unimplemented_deepcopy},
    )


def shard(model: torch.nn.Module, world: World, bf16_params: bool) -> torch.nn.Module:
    """FSDP2 per transformer layer, then the root; in place (the module's class changes, not its FQNs).

    ``bf16_params`` (CUDA with bf16): parameters are gathered and computed in bf16, gradients reduced in
    float32, the sharded master weights and AdamW states stay float32.
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16_params
        else MixedPrecisionPolicy()
    )
    layers = transformer_layers(model)
    for module in (*layers, model):
        _register_fsdp_class(type(module))
    for layer in layers:
        fully_shard(layer, mesh=world.mesh, mp_policy=policy)
    fully_shard(model, mesh=world.mesh, mp_policy=policy)
    if world.backend == "gloo":  # pytorch#162338: gloo cannot AVG; reduce with SUM and divide after
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_force_sum_reduction_for_comms(True)
    return model


def full_state_dict(
    model: torch.nn.Module, world: World, trained: set[str] | None = None
) -> dict[str, torch.Tensor]:
    """The model's state on the CPU, gathered from the shards (all processes must call this); only
    rank 0 receives the tensors, the others an empty dict. ``trained``: only these parameters (a LoRA
    run never moves its frozen base)."""
    if not world.distributed:
        state = model.state_dict()
        names = state.keys() if trained is None else trained
        return {k: state[k].detach().contiguous().cpu() for k in names}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=trained is not None
    )
    state = get_model_state_dict(model, options=options)
    return {k: v.detach().contiguous() for k, v in state.items()} if world.main else {}


def local_value(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor of a possibly distributed one (a gradient norm from ``clip_grad_norm_``)."""
    full = getattr(tensor, "full_tensor", None)
    return full() if callable(full) else tensor
