"""Training options: one table read by the command line and by YAML files.

A YAML file's keys are the flags' names (``batch-size`` or ``batch_size``); flags given on the command
line override the file; what neither sets takes the default below. The README's "Training" section
lists every key.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from kame.errors import UserError

TRAIN_CHOICES = ("all", "embeddings", "depformer")
SCHEDULES = ("constant", "cosine")


class ConfigError(UserError, ValueError):
    """A training configuration that cannot run; the message says what to fix."""


@dataclass
class TrainConfig:
    data: list[str]
    init: str
    out: str
    steps: int = 1000
    batch_size: int = 8  # global batch (all processes, all micro-batches)
    micro_batch_size: int | None = None  # per forward pass; None: the whole batch at once
    seq_len: int = 256  # frames (80 ms each)
    lr: float = 3e-5
    warmup: int = 100
    schedule: str = "constant"
    min_lr_ratio: float = 0.1  # cosine: the final lr as a fraction of lr
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    train: str = "all"
    text_pad_weight: float = 0.5
    text_word_weight: float = 1.0  # weight of word-start targets within the non-pad text mean
    semantic_weight: float = 100.0
    acoustic_weight: float = 1.0
    audio_weight: float = 1.0
    drop_events: tuple[float, float] | None = (0.1, 0.7)
    oracle_lag: tuple[int, int] | None = (3, 13)
    oracle_lead: tuple[int, int] | None = None
    decoy_events: tuple[int, int] | None = None  # wrong guesses replaced by the record's own oracle
    decoy_prefix: float = 0.0  # share of decoys that start with the first words of the record's oracle
    text_noise: float = 0.0  # share of word tokens fed back as random tokens, the targets kept clean
    live_drafts: float = 0.0  # share of samples whose last oracle gets a live back-end's timeline
    live_lead: tuple[int, int] = (4, 8)  # frames from a live-like final oracle to the first answer word
    mute_audio_steps: int = 0  # the first N steps see no audio (inputs and targets): learn the oracle first
    depformer_share: float = 1.0  # share of a step's frames the depformer is run and scored on
    save_every: int = 100
    keep_states: int = 3
    log_every: int = 10
    eval_data: list[str] | None = None
    eval_every: int = 100
    eval_records: int = 64
    device: str = "cpu"
    seed: int = 0
    encode_missing: bool = True
    activation_checkpointing: bool = False
    lora_rank: int | None = None  # LoRA adapters of this rank on every linear layer; None: full fine-tune
    lora_scaling: float = 2.0
    bf16: bool = True  # autocast on CUDA; CPU always trains in float32
    threads: int | None = None
    progress: bool = True

    def validate(self) -> None:
        positive = ("steps", "batch_size", "seq_len", "save_every", "keep_states", "log_every", "eval_every")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{_flag(name)} must be at least 1, got {getattr(self, name)}")
        micro = self.micro_batch_size or self.batch_size
        if micro < 1 or self.batch_size % micro:
            raise ConfigError(
                f"--micro-batch-size {micro} must divide --batch-size {self.batch_size} (the global batch)"
            )
        if self.lr <= 0 or self.warmup < 0:
            raise ConfigError("--lr must be > 0 and --warmup >= 0")
        if self.train not in TRAIN_CHOICES:
            raise ConfigError(f"--train {self.train!r}: choose one of {', '.join(TRAIN_CHOICES)}")
        if self.lora_rank is not None:
            if int(self.lora_rank) < 1:
                raise ConfigError(f"--lora-rank must be at least 1, got {self.lora_rank}")
            if self.train == "depformer":
                raise ConfigError(
                    "--train depformer trains the depformer fully; with --lora-rank choose all (adapters "
                    "everywhere plus the oracle embedding) or embeddings (adapters plus every embedding)"
                )
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if not self.data:
            raise ConfigError("--data is required: one or more dataset folders made by `kame data build`")
        if self.drop_events is not None:
            low, high = self.drop_events
            if not 0.0 <= low <= high <= 1.0:
                raise ConfigError(
                    f"drop-events {list(self.drop_events)}: write [low, high] with 0 <= low <= high <= 1"
                )
        if not float(self.text_word_weight) > 0.0:
            raise ConfigError(
                f"text-word-weight must be > 0 (1: no extra weight), got {self.text_word_weight}"
            )
        if int(self.mute_audio_steps) < 0:
            raise ConfigError(f"--mute-audio-steps must be >= 0, got {self.mute_audio_steps}")
        if not 0.0 < float(self.depformer_share) <= 1.0:
            raise ConfigError(
                f"--depformer-share {self.depformer_share}: write a share of the frames, 0 < share <= 1"
            )
        for name in ("decoy_prefix", "text_noise", "live_drafts"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ConfigError(
                    f"{name.replace('_', '-')} {getattr(self, name)}: write a share between 0 and 1"
                )
        for name in ("oracle_lag", "oracle_lead", "decoy_events", "live_lead"):
            value = getattr(self, name)
            if value is not None and not 0 <= value[0] <= value[1]:
                raise ConfigError(
                    f"{_flag(name)} {list(value)}: write [min, max] frames with 0 <= min <= max"
                )

    def identity(self) -> dict[str, Any]:
        """The settings that decide a run's trajectory: a resumed run must match them.

        ``steps`` may be raised on resume; logging, saving, evaluation and the progress bar change
        nothing that is trained; the device and the memory knobs (micro-batch size, activation
        checkpointing, bf16) may change so that a run can move to another machine or fit in memory.
        """
        free = {"steps", "save_every", "keep_states", "log_every", "eval_data", "eval_every",
                "eval_records", "progress", "threads", "out", "encode_missing", "device",
                "micro_batch_size", "activation_checkpointing", "bf16"}  # fmt: skip
        return {k: v for k, v in asdict(self).items() if k not in free}

    def fingerprint(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_HELP = {
    "config": "YAML file of settings (keys are these flags' names); flags override it",
    "data": "dataset folder(s) made by `kame data build`, comma-separated",
    "init": "starting checkpoint: a folder, hf://owner/name, or random:tiny",
    "out": "output folder: a front-end checkpoint, plus state/ (resumable) and metrics.jsonl",
    "steps": "optimiser steps in total (raise it to continue a finished run)",
    "batch-size": "global batch: samples per optimiser step",
    "micro-batch-size": "samples per forward pass (gradient accumulation); default: the whole batch",
    "seq-len": "frames per sample (80 ms each); longer dialogues are cropped at random",
    "lr": "peak learning rate",
    "warmup": "linear warm-up steps",
    "schedule": "after warm-up: constant or cosine",
    "train": "parameters to train: all, embeddings or depformer (the oracle embedding always trains)",
    "save-every": "write the checkpoint and a resumable state every N steps",
    "log-every": "write a metrics.jsonl line every N steps",
    "eval-data": "dataset folder(s) to evaluate on, comma-separated",
    "eval-every": "evaluate every N steps",
    "device": "cpu, cuda or cuda:N (under torchrun: cpu or cuda, one GPU per process)",
    "lora-rank": "train LoRA adapters of this rank (moshi's LoRALinear on every linear layer) instead of "
    "all weights; the oracle embedding trains fully beside them",
    "lora-scaling": "LoRA scaling (the adapter's output is multiplied by it)",
    "mute-audio-steps": "for the first N steps the LM gets no audio (its audio inputs and targets are "
    "moshi's zero token): a small model from random weights then learns to copy its oracle before it can "
    "memorise dialogues by their sound; audio and its loss come in after",
    "depformer-share": "run the depformer (the audio loss) on this random share of each step's frames, "
    "the same frames for the whole batch: the audio loss stays an unbiased estimate at that share of the "
    "depformer's cost; 1 scores every frame",
    "seed": "seed of the data order, crops, augmentations and the initial weights of random:PRESET",
}
_CLI = ("steps", "batch_size", "seq_len", "lr", "warmup", "save_every", "log_every", "eval_every", "seed",
        "lora_rank", "lora_scaling", "mute_audio_steps", "depformer_share")  # fmt: skip


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``kame train``; every one defaults to None so that "not given" is visible."""
    parser.add_argument("--config", help=_HELP["config"])
    for name in ("data", "init", "out", "eval-data", "device", "schedule", "train"):
        choices = {"train": TRAIN_CHOICES, "schedule": SCHEDULES}.get(name)
        parser.add_argument(f"--{name}", choices=choices, help=_HELP[name])
    types = {f.name: f.type for f in fields(TrainConfig)}
    for name in (*_CLI, "micro_batch_size"):
        kind = float if "float" in str(types[name]) else int
        parser.add_argument(_flag(name), type=kind, help=_HELP[name.replace("_", "-")])
    parser.add_argument(
        "--no-progress", dest="progress", action="store_const", const=False, help="no progress bar"
    )


def _split(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part for part in (p.strip() for p in value.split(",")) if part]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    raise ConfigError(f"expected a folder or a list of folders, got {value!r}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold a mapping of settings (key: value)")
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name in settings:
            raise ConfigError(f"{path}: {key!r} is set twice (as {name} and {name.replace('_', '-')})")
        settings[name] = value
    return settings


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the YAML file, then the flags that were given."""
    settings: dict[str, Any] = read_yaml(args.config) if getattr(args, "config", None) else {}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(
            f"{args.config}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    for name in known:
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    for name in ("data", "init", "out"):
        if settings.get(name) in (None, "", []):
            raise ConfigError(f"{_flag(name)} is required (as a flag or in the YAML file)")
    settings["data"] = _split(settings["data"])
    if settings.get("eval_data") is not None:
        settings["eval_data"] = _split(settings["eval_data"])
    for name in ("betas", "drop_events", "oracle_lag", "oracle_lead", "decoy_events"):
        value = settings.get(name)
        if value is not None:
            if not isinstance(value, list | tuple) or len(value) != 2:
                raise ConfigError(f"{name}: write a pair [low, high], got {value!r}")
            kind = int if name in ("oracle_lag", "oracle_lead", "decoy_events") else float
            settings[name] = (kind(value[0]), kind(value[1]))
    try:
        config = TrainConfig(**settings)
    except TypeError as exc:
        raise ConfigError(f"bad training settings: {exc}") from exc
    for f in fields(config):
        value = getattr(config, f.name)
        if (
            value is not None
            and ("int" in str(f.type) or "float" in str(f.type))
            and "tuple" not in str(f.type)
        ):
            kind = float if "float" in str(f.type) else int
            try:
                setattr(config, f.name, kind(value))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{_flag(f.name)}: expected a number, got {value!r}") from exc
    config.validate()
    return config
