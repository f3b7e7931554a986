"""The output folder of a run: an exported front-end checkpoint plus resumable state.

Layout of ``OUT/``::

    config.json, model.safetensors,   the front-end checkpoint in the KAME layout (``--frontend OUT``),
    mimi.safetensors, tokenizer.model  rewritten at every save: each file goes to a temporary name and
    [mimi_config.json]                 is renamed over the old one, config.json last
    run.json                           the settings that decide the trajectory (checked on resume)
    metrics.jsonl                      one line per logged step (and per evaluation)
    state/step_NNNNNN/                 model.safetensors, trainer.pt (optimiser, scheduler, RNG),
                                       trainer.json (step, samples seen, processes); the last K are
                                       kept; each is written as state/.tmp-step_NNNNNN and renamed
                                       when complete. Under torchrun, shards/ (torch.distributed
                                       .checkpoint: the sharded weights and AdamW states) replaces
                                       model.safetensors and the optimiser part of trainer.pt.
    base/                              LoRA runs from random:PRESET only: the base checkpoint (a LoRA
                                       OUT names its base's files, here these, elsewhere where they are)

Rerunning the same command resumes from the newest complete state; anything a killed run wrote after
it (a partial state, metrics lines of later steps) is discarded, so the rerun ends exactly where an
uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kame.errors import UserError
from kame.frontend.checkpoint import CONFIG_NAME, Frontend, save_checkpoint
from kame.train.config import TrainConfig
from kame.train.distributed import World

RUN_NAME = "run.json"
STATE_DIR = "state"
METRICS_NAME = "metrics.jsonl"
RUN_FORMAT = "kame-train/1"
SHARDS = "shards"


class RunError(UserError, ValueError):
    """An output folder that this run cannot use; the message says what to fix."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rng_state() -> dict[str, Any]:
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def setting_defaults() -> dict[str, Any]:
    """Every training setting's default, as ``run.json`` writes it."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    return json.loads(json.dumps(defaults, default=list))


class RunFolder:
    """``OUT/`` of one run: claims it (or checks that it is this run's) and reads and writes it."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.out = Path(config.out)
        self.states = self.out / STATE_DIR
        self.metrics = self.out / METRICS_NAME

    def check(self) -> bool:
        """Whether OUT already holds this run; refuse another run's state or a foreign folder."""
        run_file = self.out / RUN_NAME
        identity = self.config.identity()
        if run_file.is_file():
            stored = json.loads(run_file.read_text())
            theirs = stored.get("identity", {})
            mine = json.loads(json.dumps(identity, default=list))
            defaults = setting_defaults()  # a setting newer than the run: it ran with its default
            theirs = {**{k: defaults[k] for k in mine if k in defaults}, **theirs}
            differ = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
            if differ:
                details = "; ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} now" for k in differ[:6])
                raise RunError(
                    f"{self.out} holds the state of another run ({details}). Rerun with that run's "
                    "settings to resume it, or choose another --out."
                )
            return True
        if self.out.exists() and any(self.out.iterdir()):
            raise RunError(
                f"{self.out} is not empty and was not written by kame train (no {RUN_NAME}); "
                "choose a new or empty --out folder"
            )
        return False

    def claim(self) -> None:
        """Create OUT for this run (after ``check``), or leave it if it already is this run's."""
        if self.check():
            return
        run_file = self.out / RUN_NAME
        identity = self.config.identity()
        self.out.mkdir(parents=True, exist_ok=True)
        temporary = run_file.with_suffix(".tmp")
        temporary.write_text(json.dumps({"format": RUN_FORMAT, "identity": identity}, indent=2, default=list))
        temporary.replace(run_file)

    # --- resumable state ---------------------------------------------------------------------------

    def latest_state(self, clean: bool = True) -> Path | None:
        """The newest complete state; ``clean`` removes what a killed run left half-written."""
        if not self.states.is_dir():
            return None
        for leftover in self.states.glob(".tmp-*") if clean else ():
            shutil.rmtree(leftover, ignore_errors=True)
        complete = sorted(p for p in self.states.glob("step_*") if (p / "trainer.json").is_file())
        return complete[-1] if complete else None

    def _begin_state(self, step: int) -> tuple[Path, Path]:
        self.states.mkdir(parents=True, exist_ok=True)
        final = self.states / f"step_{step:06d}"
        temporary = self.states / f".tmp-step_{step:06d}"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
        return final, temporary

    def _finish_state(self, final: Path, temporary: Path, step: int, extra: dict[str, Any]) -> None:
        (temporary / "trainer.json").write_text(json.dumps({"step": step, **extra}, indent=2))
        for path in sorted(p for p in temporary.rglob("*") if p.is_file()):
            _fsync_file(path)
        if final.exists():
            shutil.rmtree(final)
        temporary.rename(final)
        _fsync_dir(self.states)
        complete = sorted(p for p in self.states.glob("step_*") if (p / "trainer.json").is_file())
        for old in complete[: -self.config.keep_states]:
            shutil.rmtree(old, ignore_errors=True)

    def save_state(
        self,
        step: int,
        weights: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        extra: dict[str, Any],
    ) -> Path:
        """One process: ``weights`` (the model's state, or a LoRA run's trained tensors) and the rest."""
        final, temporary = self._begin_state(step)
        save_file(weights, str(temporary / "model.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
            temporary / "trainer.pt",
        )
        self._finish_state(final, temporary, step, {**extra, "world_size": 1})
        return final

    def load_state(
        self,
        path: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        only: set[str] | None = None,
    ) -> dict[str, Any]:
        """One process; ``only``: the state holds just these keys (a LoRA run's trained tensors)."""
        device = next(model.parameters()).device
        weights = load_file(str(path / "model.safetensors"), device=str(device))
        if only is None:
            model.load_state_dict(weights)
        else:
            if set(weights) != only:
                raise RunError(
                    f"{path}: the state does not hold this run's trained tensors; choose another --out"
                )
            model.load_state_dict(weights, strict=False)
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        _set_rng_state(trainer["rng"])
        info = json.loads((path / "trainer.json").read_text())
        self.truncate_metrics(int(info["step"]))
        return info

    def save_sharded_state(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        extra: dict[str, Any],
        world: World,
        trained_only: bool,
    ) -> None:
        """Every process of a launch: its shards through ``torch.distributed.checkpoint``; rank 0 the
        rest. ``trained_only`` leaves out frozen parameters (a LoRA run's base)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        final = temporary = None
        if world.main:
            final, temporary = self._begin_state(step)
        world.barrier()
        temporary = self.states / f".tmp-step_{step:06d}"
        options = StateDictOptions(ignore_frozen_params=trained_only)
        weights, optim = get_state_dict(model, optimizer, options=options)
        dcp.save({"model": weights, "optimizer": optim}, checkpoint_id=str(temporary / SHARDS))
        world.barrier()
        if world.main:
            assert final is not None
            torch.save({"scheduler": scheduler.state_dict(), "rng": _rng_state()}, temporary / "trainer.pt")
            self._finish_state(final, temporary, step, {**extra, "world_size": world.world_size})
        world.barrier()

    def load_sharded_state(
        self,
        path: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        world: World,
        trained_only: bool,
    ) -> dict[str, Any]:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

        options = StateDictOptions(ignore_frozen_params=trained_only)
        weights, optim = get_state_dict(model, optimizer, options=options)
        state = {"model": weights, "optimizer": optim}
        dcp.load(state, checkpoint_id=str(path / SHARDS))
        set_state_dict(
            model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
            options=options,
        )  # fmt: skip
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        scheduler.load_state_dict(trainer["scheduler"])
        _set_rng_state(trainer["rng"])
        info = json.loads((path / "trainer.json").read_text())
        if world.main:
            self.truncate_metrics(int(info["step"]))
        world.barrier()
        return info

    # --- metrics ------------------------------------------------------------------------------------

    def truncate_metrics(self, step: int) -> None:
        """Drop the lines a killed run logged after the state it is resumed from."""
        if not self.metrics.is_file():
            return
        kept = [
            line
            for line in self.metrics.read_text().splitlines()
            if line and json.loads(line)["step"] <= step
        ]
        temporary = self.metrics.with_suffix(".tmp")
        temporary.write_text("".join(line + "\n" for line in kept))
        temporary.replace(self.metrics)

    def log(self, row: dict[str, Any]) -> None:
        with self.metrics.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    # --- the exported checkpoint --------------------------------------------------------------------

    def export(
        self,
        frontend: Frontend,
        tokenizer_proto: bytes,
        mimi_config: dict[str, Any] | None,
        lm_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Write OUT as a front-end checkpoint (``lm_state``: the LM's full state, gathered)."""
        self._publish(
            lambda staging: save_checkpoint(
                staging,
                frontend,
                tokenizer_proto,
                mimi_config,
                lm_gen_config=frontend.lm_gen_config,
                lm_state=lm_state,
            )  # fmt: skip
        )

    def export_lora(self, config: dict[str, Any], files: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write OUT as a LoRA checkpoint: ``config.json`` (which names the base's files) and adapters."""

        def write(staging: Path) -> None:
            staging.mkdir(parents=True)
            for name, tensors in files.items():
                save_file(tensors, str(staging / name))
            (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2))

        self._publish(write)

    def _publish(self, write: Callable[[Path], Any]) -> None:
        """Files written to a staging folder, then renamed into OUT one by one, config.json last."""
        staging = self.out / ".tmp-export"
        shutil.rmtree(staging, ignore_errors=True)
        write(staging)
        names = [p.name for p in staging.iterdir() if p.name != CONFIG_NAME] + [CONFIG_NAME]
        for name in names:
            _fsync_file(staging / name)
            (staging / name).replace(self.out / name)
        _fsync_dir(self.out)
        staging.rmdir()
