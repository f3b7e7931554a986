"""The output folder of a run: an exported front-end checkpoint plus resumable state.

Layout of ``OUT/``::

    config.json, model.safetensors,   the front-end checkpoint in the KAME layout (``--frontend OUT``),
    mimi.safetensors, tokenizer.model  rewritten at every save: each file goes to a temporary name and
    [mimi_config.json]                 is renamed over the old one, config.json last
    run.json                           the settings that decide the trajectory (checked on resume)
    metrics.jsonl                      one line per logged step (and per evaluation)
    state/step_NNNNNN/                 model.safetensors, trainer.pt (optimiser, scheduler, RNG),
                                       trainer.json (step, samples seen); the last K are kept; each is
                                       written as state/.tmp-step_NNNNNN and renamed when complete

Rerunning the same command resumes from the newest complete state; anything a killed run wrote after
it (a partial state, metrics lines of later steps) is discarded, so the rerun ends exactly where an
uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kame.frontend.checkpoint import CONFIG_NAME, Frontend, save_checkpoint
from kame.train.config import TrainConfig

RUN_NAME = "run.json"
STATE_DIR = "state"
METRICS_NAME = "metrics.jsonl"
RUN_FORMAT = "kame-train/1"


class RunError(ValueError):
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


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


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

    def latest_state(self) -> Path | None:
        if not self.states.is_dir():
            return None
        for leftover in self.states.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        complete = sorted(p for p in self.states.glob("step_*") if (p / "trainer.json").is_file())
        return complete[-1] if complete else None

    def save_state(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        extra: dict[str, Any],
    ) -> Path:
        self.states.mkdir(parents=True, exist_ok=True)
        final = self.states / f"step_{step:06d}"
        temporary = self.states / f".tmp-step_{step:06d}"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, str(temporary / "model.safetensors"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
            temporary / "trainer.pt",
        )
        (temporary / "trainer.json").write_text(json.dumps({"step": step, **extra}, indent=2))
        for name in ("model.safetensors", "trainer.pt", "trainer.json"):
            _fsync_file(temporary / name)
        if final.exists():
            shutil.rmtree(final)
        temporary.rename(final)
        _fsync_dir(self.states)
        complete = sorted(p for p in self.states.glob("step_*") if (p / "trainer.json").is_file())
        for old in complete[: -self.config.keep_states]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_state(
        self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
    ) -> dict[str, Any]:
        device = next(model.parameters()).device
        weights = load_file(str(path / "model.safetensors"), device=str(device))
        model.load_state_dict(weights)
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        torch.set_rng_state(trainer["rng"]["torch"])
        if "cuda" in trainer["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(trainer["rng"]["cuda"])
        info = json.loads((path / "trainer.json").read_text())
        self.truncate_metrics(int(info["step"]))
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

    def export(self, frontend: Frontend, tokenizer_proto: bytes, mimi_config: dict[str, Any] | None) -> None:
        """Write OUT as a front-end checkpoint: files renamed into place one by one, config.json last."""
        staging = self.out / ".tmp-export"
        shutil.rmtree(staging, ignore_errors=True)
        save_checkpoint(staging, frontend, tokenizer_proto, mimi_config, lm_gen_config=frontend.lm_gen_config)
        names = [p.name for p in staging.iterdir() if p.name != CONFIG_NAME] + [CONFIG_NAME]
        for name in names:
            _fsync_file(staging / name)
            (staging / name).replace(self.out / name)
        _fsync_dir(self.out)
        staging.rmdir()
