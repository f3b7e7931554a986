"""The training loop: one process on a CPU or a GPU, or a ``torchrun`` launch of many; resumable.

Step ``s`` trains on samples ``[s * batch_size, (s + 1) * batch_size)`` of the run's sample order
(``collate.SampleOrder``). Process ``r`` of ``W`` takes the ``r``-th contiguous block of ``batch_size /
W`` of them and splits it into micro-batches; the step's loss is the mean of all processes' micro-batch
losses (each a masked mean), so W processes with micro-batch m compute the same loss and gradient as one
process with micro-batch m (gradient accumulation), and the per-step losses logged by rank 0 are that
global mean. Nothing else decides what a step sees, so a resumed run repeats an uninterrupted one
exactly: the state holds the weights, the optimiser, the scheduler and the RNG, and the data position
is the step.

Under torchrun (``distributed``) the model is sharded with FSDP2, resumable state goes through
``torch.distributed.checkpoint``, and the exported checkpoint is gathered and written by rank 0. With
``lora_rank`` the LM's linears get moshi's LoRA adapters and only they, the oracle embedding (and with
``train: embeddings`` every embedding) train; OUT is then a LoRA checkpoint naming its base.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kame.frontend import presets
from kame.frontend.checkpoint import (
    CONFIG_NAME,
    Frontend,
    base_file_keys,
    ensure_tiny_checkpoint,
    load_frontend,
    random_frontend,
    save_checkpoint,
)
from kame.train import lora as lora_files
from kame.train.collate import ZERO, Augment, SampleOrder, collate, make_sample, model_inputs, sample_rng
from kame.train.config import TrainConfig
from kame.train.data import TrainRecord, load_records
from kame.train.distributed import World, full_state_dict, init_world, local_value, shard
from kame.train.losses import TEXT_PAD, LossWeights, compute_losses, word_starts
from kame.train.random_start import prepare_random_start
from kame.train.state import RunError, RunFolder

BASE_FOLDER = "base"

logger = logging.getLogger(__name__)

END_OF_PAD = 0


@dataclass
class Initial:
    """The starting front-end plus what exporting it needs (tokenizer bytes, Mimi config)."""

    frontend: Frontend
    tokenizer_proto: bytes
    mimi_config: dict[str, Any] | None


def load_initial(spec: str, device: torch.device, seed: int, dtype: torch.dtype = torch.float32) -> Initial:
    """``--init``: a checkpoint folder, ``hf://owner/name``, ``tiny`` or ``random:PRESET`` (which starts
    as ``kame.train.random_start`` says)."""
    if spec.startswith("random:"):
        preset = spec.removeprefix("random:")
        frontend = random_frontend(preset, device=device, dtype=dtype, seed=seed)
        prepare_random_start(frontend.lm)
        proto = frontend.tokenizer.serialized_model_proto() if frontend.tokenizer is not None else b""
        return Initial(frontend, proto, presets.mimi_config(preset))
    if spec == "tiny":
        spec = str(ensure_tiny_checkpoint())
    frontend = load_frontend(spec, device=device, dtype=dtype)
    proto = frontend.tokenizer.serialized_model_proto() if frontend.tokenizer is not None else b""
    mimi_config = None
    config_path = Path(spec) / CONFIG_NAME
    if not spec.startswith("hf://") and config_path.is_file():
        name = json.loads(config_path.read_text()).get("mimi_config_name")
        if name:
            mimi_config = json.loads((Path(spec) / name).read_text())
    return Initial(frontend, proto, mimi_config)


def select_trainable(model: torch.nn.Module, which: str, lora: bool = False) -> list[str]:
    """``all``, ``embeddings`` (every table whose name has "emb") or ``depformer``; oracle_emb always.

    With ``lora``: the adapters, plus every embedding for ``embeddings``; the base weights stay frozen.
    Returns the names of the trained parameters.
    """

    def wanted(name: str) -> bool:
        if name.startswith("oracle_emb."):
            return True
        if lora:
            return lora_files.is_adapter(name) or (which == "embeddings" and "emb" in name)
        if which == "all":
            return True
        if which == "embeddings":
            return "emb" in name
        return name.startswith("depformer") or name.startswith("linears.")

    chosen = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(wanted(name))
        if parameter.requires_grad:
            chosen.append(name)
    return chosen


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up to the peak, then constant or cosine down to ``min_lr_ratio``."""
    if config.warmup and step < config.warmup:
        return (step + 1) / config.warmup
    if config.schedule == "constant":
        return 1.0
    span = max(1, config.steps - config.warmup)
    progress = min(1.0, (step - config.warmup) / span)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def depformer_positions(config: TrainConfig, step: int, device: torch.device) -> torch.Tensor:
    """The frames a step scores audio on (``depformer_share`` of ``seq_len``, sorted): drawn from
    (seed, step), so a resumed run and every process of a distributed one draw the same."""
    count = max(1, round(config.depformer_share * config.seq_len))
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    chosen = torch.randperm(config.seq_len, generator=generator)[:count]
    return chosen.sort().values.to(device)


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        *,
        world: World | None = None,
        device: torch.device | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.world = world or World()
        self.rank, self.world_size = self.world.rank, self.world.world_size
        self.echo = echo if self.world.main else _silent
        micro = config.micro_batch_size or 1
        if config.batch_size % (self.world_size * micro):
            raise RunError(
                f"--batch-size {config.batch_size} must be a multiple of the process count "
                f"({self.world_size}) x --micro-batch-size ({micro}): each process takes an equal part"
            )
        self.device = device if device is not None else torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RunError("--device cuda: no CUDA device is visible; use --device cpu")
        if config.threads:
            torch.set_num_threads(config.threads)
        self.lora = config.lora_rank is not None
        self.folder = RunFolder(config)
        self.folder.check()
        # a sharded CUDA model is loaded on the CPU and each process moves only its shards to its GPU
        load_device = torch.device("cpu") if self.world.distributed else self.device
        base_dtype = (
            torch.bfloat16 if self.lora and self.device.type == "cuda" and config.bf16 else torch.float32
        )
        with self.world.main_first():  # rank 0 first: it may create the tiny checkpoint
            self.initial = load_initial(config.init, load_device, config.seed, base_dtype)
        self.frontend = self.initial.frontend
        if load_device != self.device:
            self.frontend.mimi.to(self.device)  # Mimi encodes records whose codes are not cached
        self.model = self.frontend.lm
        self.tokenizer = self.frontend.tokenizer
        self.start_token = int(self.model.oracle_start_token_id)
        with self.world.main_first():  # rank 0 first: it fills the Mimi code caches
            self.records = load_records(
                config.data, self.frontend, encode_missing=config.encode_missing, progress=self.echo
            )
            self.eval_records: list[TrainRecord] = []
            if config.eval_data:
                self.eval_records = load_records(
                    config.eval_data, self.frontend, encode_missing=config.encode_missing,
                    limit=config.eval_records, progress=self.echo,
                )  # fmt: skip
        with self.world.main_first():
            if self.world.main:
                self.folder.claim()
                self.base_files = self._write_base() if self.lora else {}
            else:
                self.base_files = self._base_files() if self.lora else {}
        self.order = SampleOrder([r.id for r in self.records], config.seed)
        decoys = ()  # other records' last oracles, for decoy_events
        if config.decoy_events or config.live_drafts:
            decoys = tuple(str(r.events[-1]["text"]) for r in self.records if r.events)
        self.augment = Augment(
            config.drop_events, config.oracle_lag, config.oracle_lead, config.decoy_events, decoys,
            float(config.decoy_prefix), float(config.text_noise), float(config.live_drafts),
            tuple(config.live_lead),
        )  # fmt: skip
        self.weights = LossWeights(
            config.text_pad_weight, float(config.text_word_weight), config.semantic_weight,
            config.acoustic_weight, config.audio_weight,
        )  # fmt: skip
        self.word_start = (
            word_starts(self.tokenizer, self.model.text_card) if config.text_word_weight != 1.0 else None
        )
        if config.activation_checkpointing:
            for module in (self.model.transformer, self.model.depformer):
                module.checkpointing = True
        if self.lora:
            lora_files.add_adapters(self.model, int(config.lora_rank or 0), config.lora_scaling, config.seed)
        self.trained_names = select_trainable(self.model, config.train, self.lora)
        if self.lora:  # what trains is float32, whatever the base's dtype
            for parameter in self.model.parameters():
                if parameter.requires_grad and parameter.dtype != torch.float32:
                    parameter.data = parameter.data.float()
        if self.world.distributed:
            shard(self.model, self.world, bf16_params=self.device.type == "cuda" and config.bf16)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=config.lr, betas=config.betas, eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, config))
        self.step = 0
        with self.world.main_first():
            latest = self.folder.latest_state(clean=self.world.main)
        if latest is not None:
            info = self._load_state(latest)
            self.step = int(info["step"])
            self.echo(f"resumed from {latest} (step {self.step})")
        elif self.world.main and self.folder.metrics.exists():
            self.folder.truncate_metrics(0)
        self.world.barrier()

    # --- LoRA base ----------------------------------------------------------------------------------

    def _base_files(self) -> dict[str, str]:
        """config.json file keys naming the base's files: where they are, or OUT/base/ for random:."""
        if self.config.init.startswith("random:"):
            keys = {"moshi_name": "model.safetensors", "mimi_name": "mimi.safetensors",
                    "tokenizer_name": "tokenizer.model", "mimi_config_name": "mimi_config.json"}  # fmt: skip
            if self.initial.mimi_config is None:
                keys.pop("mimi_config_name")
            return {k: f"{BASE_FOLDER}/{v}" for k, v in keys.items()}
        return base_file_keys(self.config.init)

    def _write_base(self) -> dict[str, str]:
        """Rank 0, before the adapters: a random base has no other home than OUT/base/ (written once)."""
        if (
            self.config.init.startswith("random:")
            and not (self.folder.out / BASE_FOLDER / CONFIG_NAME).is_file()
        ):
            staging = self.folder.out / f".tmp-{BASE_FOLDER}"
            shutil.rmtree(staging, ignore_errors=True)
            save_checkpoint(staging, self.frontend, self.initial.tokenizer_proto, self.initial.mimi_config)
            shutil.rmtree(self.folder.out / BASE_FOLDER, ignore_errors=True)
            staging.rename(self.folder.out / BASE_FOLDER)
        return self._base_files()

    # --- one step -----------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.config.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def samples(self, step: int) -> list:
        chosen = self.order.batch(step, self.config.batch_size, self.rank, self.world_size)
        out = []
        for epoch, index in chosen:
            record = self.records[index]
            rng = sample_rng(self.config.seed, epoch, record.id)
            out.append(
                make_sample(record, self.config.seq_len, self.tokenizer, self.start_token, self.augment, rng)
            )
        return out

    def train_step(self) -> dict[str, float]:
        config = self.config
        self.model.train()
        samples = self.samples(self.step)
        micro = config.micro_batch_size or len(samples)
        chunks = [samples[i : i + micro] for i in range(0, len(samples), micro)]
        self.optimizer.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "text_loss": 0.0, "audio_loss": 0.0}
        muted = self.step < config.mute_audio_steps
        text_only = muted or config.audio_weight == 0  # no audio term: skip the depformer
        positions = None
        if not text_only and config.depformer_share < 1:
            positions = depformer_positions(config, self.step, self.device)
        for chunk in chunks:
            codes, oracle = (t.to(self.device) for t in collate(chunk))
            if muted:  # moshi's zero token: a zero input embedding and no loss on those positions
                codes[:, 1:] = ZERO
            with self._autocast():
                output = self.model(
                    model_inputs(codes, chunk), oracle=oracle, text_only=text_only,
                    depformer_positions=positions,
                )  # fmt: skip
            losses = compute_losses(output, codes, self.model.dep_q, self.weights, self.word_start)
            (losses.loss / len(chunks)).backward()
            for key in totals:
                totals[key] += getattr(losses, key).item() / len(chunks)
        grad_norm = local_value(torch.nn.utils.clip_grad_norm_(self.trainable, config.grad_clip))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        totals = self.world.mean(totals, self.device)
        frames = self.world.total(sum(s.frames for s in samples), self.device)
        return {**totals, "lr": lr, "grad_norm": float(grad_norm), "frames": frames, "audio_muted": muted}

    # --- evaluation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Losses on the eval set, and text accuracy on answer tokens with and without the oracles.

        Under torchrun every process evaluates the whole set (a sharded forward needs them all)."""
        self.model.eval()
        config = self.config
        samples = [
            make_sample(r, config.seq_len, self.tokenizer, self.start_token, self.augment, None)
            for r in self.eval_records
        ]
        micro = config.micro_batch_size or config.batch_size
        sums = {"loss": 0.0, "text_loss": 0.0, "audio_loss": 0.0}
        hits = {"with": 0, "without": 0}
        answer_tokens = 0
        for i in range(0, len(samples), micro):
            codes, oracle = (t.to(self.device) for t in collate(samples[i : i + micro]))
            silent = torch.where(oracle >= 0, torch.full_like(oracle, TEXT_PAD), oracle)
            for key, stream in (("with", oracle), ("without", silent)):
                with self._autocast():
                    output = self.model(codes, oracle=stream)
                text = codes[:, 0]
                answer = output.text_mask[:, 0] & (text != TEXT_PAD) & (text != END_OF_PAD)
                predicted = output.text_logits[:, 0].argmax(-1)
                hits[key] += int((predicted[answer] == text[answer]).sum())
                if key == "with":
                    answer_tokens += int(answer.sum())
                    losses = compute_losses(output, codes, self.model.dep_q, self.weights, self.word_start)
                    count = codes.shape[0]
                    for name in sums:
                        sums[name] += float(getattr(losses, name)) * count
        n = max(1, len(samples))
        result = {f"eval_{k}": v / n for k, v in sums.items()}
        result["eval_answer_accuracy"] = hits["with"] / max(1, answer_tokens)
        result["eval_answer_accuracy_no_oracle"] = hits["without"] / max(1, answer_tokens)
        return result

    # --- saving -------------------------------------------------------------------------------------

    def save(self) -> None:
        """The exported checkpoint (gathered, written by rank 0), then a resumable state."""
        state = full_state_dict(self.model, self.world, set(self.trained_names) if self.lora else None)
        if self.world.main:
            if self.lora:
                self.folder.export_lora(self._lora_config(), self._lora_files(state))
            else:
                self.folder.export(
                    self.frontend, self.initial.tokenizer_proto, self.initial.mimi_config, lm_state=state
                )
        samples = self.step * self.config.batch_size
        extra = {
            "samples": samples,
            "epoch": samples // len(self.records),
            "config": self.config.fingerprint(),
        }
        if self.world.distributed:
            self.folder.save_sharded_state(
                self.step, self.model, self.optimizer, self.scheduler, extra, self.world, self.lora
            )
        else:
            self.folder.save_state(self.step, state, self.optimizer, self.scheduler, extra)

    def _load_state(self, path: Path) -> dict[str, Any]:
        stored = int(json.loads((path / "trainer.json").read_text()).get("world_size", 1))
        if stored != self.world_size:
            raise RunError(
                f"{path} was written by {stored} process(es) and this launch has {self.world_size}: resume "
                f"it with {'torchrun --nproc-per-node ' + str(stored) if stored > 1 else 'one process'} "
                "(the sharded state belongs to that layout), or choose another --out"
            )
        if self.world.distributed:
            return self.folder.load_sharded_state(
                path, self.model, self.optimizer, self.scheduler, self.world, self.lora
            )
        only = set(self.trained_names) if self.lora else None
        return self.folder.load_state(path, self.model, self.optimizer, self.scheduler, only=only)

    def _lora_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {**self.base_files, "model_type": "moshi", **self.frontend.lm_config}
        config.update(
            lora=True, lora_rank=int(self.config.lora_rank or 0),
            lora_scaling=float(self.config.lora_scaling), lora_name=lora_files.LORA_NAME,
        )  # fmt: skip
        if self.frontend.lm_gen_config:
            config["lm_gen_config"] = self.frontend.lm_gen_config
        return config

    def _lora_files(self, state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        kame, moshi = lora_files.adapter_files(state)
        return {lora_files.LORA_NAME: kame, lora_files.MOSHI_LORA_NAME: moshi}

    # --- the run ------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        config = self.config
        bar = _progress(config, self.step, self.world.main)
        window_frames, window_start = 0, time.perf_counter()
        last: dict[str, Any] = {}
        try:
            while self.step < config.steps:
                try:
                    metrics = self.train_step()
                except torch.OutOfMemoryError as exc:
                    raise RunError(
                        f"out of memory at batch {config.batch_size} (micro-batch "
                        f"{config.micro_batch_size or config.batch_size}) x {config.seq_len} frames: lower "
                        "--micro-batch-size (the global batch stays, by accumulation) or --seq-len, or set "
                        "activation_checkpointing: true"
                    ) from exc
                window_frames += int(metrics.pop("frames"))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.3f}")
                if self.step % config.log_every == 0 or self.step == config.steps:
                    elapsed = time.perf_counter() - window_start
                    row = {"step": self.step, **metrics, "frames_per_s": window_frames / max(elapsed, 1e-9)}
                    if self.world.main:
                        self.folder.log(row)
                    last = row
                    window_frames, window_start = 0, time.perf_counter()
                if self.eval_records and (self.step % config.eval_every == 0 or self.step == config.steps):
                    row = {"step": self.step, **self.evaluate()}
                    if self.world.main:
                        self.folder.log(row)
                    self.echo(" ".join(f"{k}={v:.4g}" for k, v in row.items()))
                    window_start = time.perf_counter()
                if self.step % config.save_every == 0 or self.step == config.steps:
                    self.save()
                    window_start = time.perf_counter()
        finally:
            if bar is not None:
                bar.close()
        if self.step == config.steps and not (self.folder.out / CONFIG_NAME).is_file():
            self.save()  # a rerun of a finished run still leaves a checkpoint
        return last


def _progress(config: TrainConfig, step: int, main: bool = True):  # type: ignore[no-untyped-def]
    if not config.progress or not main:
        return None
    from tqdm import tqdm

    return tqdm(total=config.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)


def _silent(_message: str) -> None:
    """Processes other than rank 0 print nothing."""


def train(config: TrainConfig, *, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a training run to ``config.steps``, in this process or as one process of a
    torchrun launch; returns the last logged metrics."""
    world, device = init_world(config.device)
    try:
        return Trainer(config, world=world, device=device, echo=echo).run()
    finally:
        world.close()
