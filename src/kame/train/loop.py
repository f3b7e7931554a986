"""The training loop: one process (``rank`` 0 of ``world_size`` 1) on a CPU or a GPU, resumable.

Step ``s`` trains on samples ``[s * batch_size, (s + 1) * batch_size)`` of the run's sample order
(``collate.SampleOrder``), split into micro-batches whose mean losses are averaged (gradient
accumulation). Nothing else decides what a step sees, so a resumed run repeats an uninterrupted one
exactly: the state holds the weights, the optimiser, the scheduler and the RNG, and the data position
is the step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
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
    ensure_tiny_checkpoint,
    load_frontend,
    random_frontend,
)
from kame.train.collate import Augment, SampleOrder, collate, make_sample, sample_rng
from kame.train.config import TrainConfig
from kame.train.data import TrainRecord, load_records
from kame.train.losses import TEXT_PAD, LossWeights, compute_losses
from kame.train.state import RunError, RunFolder

logger = logging.getLogger(__name__)

END_OF_PAD = 0


@dataclass
class Initial:
    """The starting front-end plus what exporting it needs (tokenizer bytes, Mimi config)."""

    frontend: Frontend
    tokenizer_proto: bytes
    mimi_config: dict[str, Any] | None


def load_initial(spec: str, device: torch.device, seed: int) -> Initial:
    """``--init``: a checkpoint folder, ``hf://owner/name``, ``tiny`` or ``random:PRESET``; float32."""
    if spec.startswith("random:"):
        preset = spec.removeprefix("random:")
        frontend = random_frontend(preset, device=device, dtype=torch.float32, seed=seed)
        proto = frontend.tokenizer.serialized_model_proto() if frontend.tokenizer is not None else b""
        return Initial(frontend, proto, presets.mimi_config(preset))
    if spec == "tiny":
        spec = str(ensure_tiny_checkpoint())
    frontend = load_frontend(spec, device=device, dtype=torch.float32)
    proto = frontend.tokenizer.serialized_model_proto() if frontend.tokenizer is not None else b""
    mimi_config = None
    config_path = Path(spec) / CONFIG_NAME
    if not spec.startswith("hf://") and config_path.is_file():
        name = json.loads(config_path.read_text()).get("mimi_config_name")
        if name:
            mimi_config = json.loads((Path(spec) / name).read_text())
    return Initial(frontend, proto, mimi_config)


def select_trainable(model: torch.nn.Module, which: str) -> list[torch.nn.Parameter]:
    """``all``, ``embeddings`` (every table whose name has "emb") or ``depformer``; oracle_emb always."""

    def wanted(name: str) -> bool:
        if name.startswith("oracle_emb.") or which == "all":
            return True
        if which == "embeddings":
            return "emb" in name
        return name.startswith("depformer") or name.startswith("linears.")

    chosen = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(wanted(name))
        if parameter.requires_grad:
            chosen.append(parameter)
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


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.echo = echo
        if config.batch_size % (world_size * (config.micro_batch_size or 1)):
            raise RunError("--batch-size must be a multiple of world size x micro-batch size")
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RunError("--device cuda: no CUDA device is visible; use --device cpu")
        if config.threads:
            torch.set_num_threads(config.threads)
        self.folder = RunFolder(config)
        self.folder.check()
        self.initial = load_initial(config.init, self.device, config.seed)
        self.frontend = self.initial.frontend
        self.model = self.frontend.lm
        self.tokenizer = self.frontend.tokenizer
        self.start_token = int(self.model.oracle_start_token_id)
        self.records = load_records(
            config.data, self.frontend, encode_missing=config.encode_missing, progress=echo
        )
        self.eval_records: list[TrainRecord] = []
        if config.eval_data:
            self.eval_records = load_records(
                config.eval_data, self.frontend, encode_missing=config.encode_missing,
                limit=config.eval_records, progress=echo,
            )  # fmt: skip
        self.folder.claim()
        self.order = SampleOrder([r.id for r in self.records], config.seed)
        self.augment = Augment(config.drop_events, config.oracle_lag, config.oracle_lead)
        self.weights = LossWeights(
            config.text_pad_weight, config.semantic_weight, config.acoustic_weight, config.audio_weight
        )
        if config.activation_checkpointing:
            for module in (self.model.transformer, self.model.depformer):
                module.checkpointing = True
        self.trainable = select_trainable(self.model, config.train)
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=config.lr, betas=config.betas, eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, config))
        self.step = 0
        latest = self.folder.latest_state()
        if latest is not None:
            info = self.folder.load_state(latest, self.model, self.optimizer, self.scheduler)
            self.step = int(info["step"])
            echo(f"resumed from {latest} (step {self.step})")
        elif self.folder.metrics.exists():
            self.folder.truncate_metrics(0)

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
        for chunk in chunks:
            codes, oracle = (t.to(self.device) for t in collate(chunk))
            with self._autocast():
                output = self.model(codes, oracle=oracle)
            losses = compute_losses(output, codes, self.model.dep_q, self.weights)
            (losses.loss / len(chunks)).backward()
            for key in totals:
                totals[key] += getattr(losses, key).item() / len(chunks)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, config.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {**totals, "lr": lr, "grad_norm": float(grad_norm), "frames": sum(s.frames for s in samples)}

    # --- evaluation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Losses on the eval set, and text accuracy on answer tokens with and without the oracles."""
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
                    losses = compute_losses(output, codes, self.model.dep_q, self.weights)
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
        self.folder.export(self.frontend, self.initial.tokenizer_proto, self.initial.mimi_config)
        samples = self.step * self.config.batch_size
        self.folder.save_state(
            self.step, self.model, self.optimizer, self.scheduler,
            {"samples": samples, "epoch": samples // len(self.records), "config": self.config.fingerprint()},
        )  # fmt: skip

    # --- the run ------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        config = self.config
        bar = _progress(config, self.step)
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
                    self.folder.log(row)
                    last = row
                    window_frames, window_start = 0, time.perf_counter()
                if self.eval_records and (self.step % config.eval_every == 0 or self.step == config.steps):
                    row = {"step": self.step, **self.evaluate()}
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


def _progress(config: TrainConfig, step: int):  # type: ignore[no-untyped-def]
    if not config.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=config.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)


def train(config: TrainConfig, *, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a training run to ``config.steps``; returns the last logged metrics."""
    return Trainer(config, echo=echo).run()
