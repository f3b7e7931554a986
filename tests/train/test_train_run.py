"""``kame train`` as a user runs it: output layout and metrics, YAML and flags, resuming (a SIGKILLed run
and a raised ``--steps`` end bit-identical to an uninterrupted run), and the trained checkpoint served by
``kame infer`` and replayed identically by stock moshi plus the oracle embedding added by hand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NO_TORCH_COMPILE": "1"}
SETTINGS = {
    "init": "random:tiny", "batch_size": 4, "seq_len": 48, "lr": 2e-3, "warmup": 5, "schedule": "constant",
    "save_every": 5, "keep_states": 2, "log_every": 1, "seed": 3, "threads": 1, "progress": False,
}  # fmt: skip


def _config(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({**SETTINGS, **overrides}))
    return path


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kame.train", *args], capture_output=True, text=True, env=ENV, timeout=300
    )


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("frames_per_s", None)
    return rows


def _same_run(a: Path, b: Path) -> None:
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert sorted(p.name for p in (a / "state").iterdir()) == sorted(p.name for p in (b / "state").iterdir())
    for state in (a / "state").iterdir():
        for name in ("model.safetensors", "trainer.json"):
            assert (state / name).read_bytes() == (b / "state" / state.name / name).read_bytes()
        ours = torch.load(state / "trainer.pt", weights_only=False)["optimizer"]["state"]
        theirs = torch.load(b / "state" / state.name / "trainer.pt", weights_only=False)["optimizer"]["state"]
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k]["exp_avg_sq"], theirs[k]["exp_avg_sq"]) for k in ours)
    assert _metrics(a) == _metrics(b)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, dataset) -> tuple[Path, Path]:
    """An uninterrupted 40-step run of the tiny preset (the one the resumed runs must equal)."""
    folder = tmp_path_factory.mktemp("reference")
    config = _config(folder)
    out = folder / "out"
    proc = _train("--config", str(config), "--data", str(dataset), "--out", str(out), "--steps", "40")
    assert proc.returncode == 0, proc.stderr
    return config, out


def test_output_is_a_checkpoint_with_metrics_and_states(reference_run, dataset):
    from kame.frontend.checkpoint import load_frontend

    _, out = reference_run
    rows = _metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 41))
    for row in rows:
        assert {"step", "loss", "text_loss", "audio_loss", "lr", "grad_norm"} <= set(row)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[0]["lr"] == pytest.approx(2e-3 / 5) and rows[-1]["lr"] == pytest.approx(2e-3)
    assert sorted(p.name for p in (out / "state").iterdir()) == ["step_000035", "step_000040"]  # last K = 2
    frontend = load_frontend(out)
    trained = load_file(str(out / "state" / "step_000040" / "model.safetensors"))
    assert all(torch.equal(v, trained[k]) for k, v in frontend.lm.state_dict().items())
    assert "oracle_emb.weight" in trained
    config = json.loads((out / "config.json").read_text())
    assert config["moshi_name"] == "model.safetensors" and config["text_card"] == frontend.lm.text_card
    # a rerun of a finished run changes nothing
    before = (out / "model.safetensors").read_bytes()
    proc = _train(
        "--config", str(reference_run[0]), "--data", str(dataset), "--out", str(out), "--steps", "40"
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").read_bytes() == before


def test_sigkilled_run_resumes_bit_identical(reference_run, dataset, tmp_path):
    config, reference = reference_run
    out = tmp_path / "out"
    command = [sys.executable, "-m", "kame.train", "--config", str(config), "--data", str(dataset),
               "--out", str(out), "--steps", "40"]  # fmt: skip
    for wait_for in ("step_000010", "step_000020"):  # kill twice, each time mid-run
        proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (out / "state" / wait_for).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.03)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert 0 < len(rows) < 40
    proc = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout
    _same_run(reference, out)


def test_raised_steps_continue_exactly(reference_run, dataset, tmp_path):
    config, reference = reference_run
    out = tmp_path / "out"
    for steps in ("12", "40"):
        proc = _train("--config", str(config), "--data", str(dataset), "--out", str(out), "--steps", steps)
        assert proc.returncode == 0, proc.stderr
    _same_run(reference, out)


def test_flags_override_the_yaml_file(tmp_path):
    import argparse

    from kame.train.config import add_arguments, build_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config_path = tmp_path / "dashes.yaml"
    config_path.write_text(
        "init: tiny\nseq-len: 99\ndata: a,b\noracle_lag: [2, 4]\nout: o\nlr: 0.1\nwarmup: 5\n"
    )
    config = build_config(
        parser.parse_args(["--config", str(config_path), "--lr", "0.5", "--batch-size", "8"])
    )
    assert config.seq_len == 99 and config.lr == 0.5 and config.batch_size == 8 and config.data == ["a", "b"]
    assert config.oracle_lag == (2, 4) and config.oracle_lead is None and config.warmup == 5
    tiny = build_config(
        parser.parse_args(["--config", "configs/train/tiny.yaml", "--data", "d", "--out", "o"])
    )
    assert tiny.init == "random:tiny" and tiny.device == "cpu"


def _replay_with_stock_moshi(out: Path, frames: list[dict]) -> None:
    """Stock ``moshi`` LMModel with OUT's weights; the oracle embedding is looked up and summed by hand."""
    from moshi.models.lm import LMModel

    config = json.loads((out / "config.json").read_text())
    file_keys = {
        "moshi_name",
        "mimi_name",
        "mimi_config_name",
        "tokenizer_name",
        "model_type",
        "lm_gen_config",
    }
    model = LMModel(**{k: v for k, v in config.items() if k not in file_keys}).eval()
    weights = load_file(str(out / config["moshi_name"]))
    table = weights.pop("oracle_emb.weight")
    model.load_state_dict(weights)
    # TOKENS.json: step s is model position s and feeds frames[s]["oracle"] there; the text and audio it
    # samples come back one step later, in frames[s + 1], beside the user codes of the same frame
    steps = len(frames)
    codes = torch.tensor([[f["text"], *f["audio"], *f["user"]] for f in frames[1:]], dtype=torch.long).T[
        None
    ]  # [1, 17, T] with T = steps - 1 model positions
    oracle = torch.tensor([f["oracle"] for f in frames[: steps - 1]])
    assert len(set(oracle.tolist())) > 2, "the oracle script fed nothing"
    embedded = table[oracle.clamp(min=0)] * (oracle >= 0)[:, None]
    with torch.no_grad():
        initial = model._get_initial_token()
        from moshi.models.lm import _delay_sequence

        delayed = torch.cat([initial, _delay_sequence(model.delays, codes, initial)], dim=2)[:, :, :-1]
        hidden, text_logits = model.forward_text(delayed, sum_condition=embedded[None])
        audio_logits = model.forward_depformer_training(
            torch.cat([initial, _delay_sequence(model.delays, codes, initial)], dim=2)[:, :, 1:], hidden
        )
    text = text_logits[0, 0].argmax(-1)
    assert torch.equal(text, codes[0, 0]), "greedy text differs from the stock model's argmax"
    for k, delay in enumerate(model.delays[1 : 1 + model.dep_q]):
        predicted = audio_logits[0, k].argmax(-1)[delay:]
        assert torch.equal(predicted, codes[0, 1 + k, : codes.shape[-1] - delay]), f"codebook {k}"


def test_trained_checkpoint_runs_in_kame_infer_and_matches_stock_moshi(reference_run, tmp_path):
    import numpy as np
    import soundfile as sf

    from kame.data.dataset import read_records

    _, out = reference_run
    dataset = Path(json.loads((out / "run.json").read_text())["identity"]["data"][0])
    record = next(iter(read_records(dataset)))
    wav = tmp_path / "user.wav"
    sf.write(str(wav), record.user, record.sample_rate)
    script = tmp_path / "oracle.jsonl"
    script.write_text(
        "\n".join(
            json.dumps({"time": e["time"], "op": "reset", "text": e["text"]}) for e in record.meta["oracles"]
        )
    )
    tokens = tmp_path / "tokens.json"
    proc = subprocess.run(
        [sys.executable, "-m", "kame", "infer", str(wav), "--frontend", str(out),
         "--oracle-script", str(script), "--output", str(tmp_path / "out.wav"), "--tokens", str(tokens),
         "--greedy", "--seed", "0"],
        capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    frames = json.loads(tokens.read_text())["frames"]
    assert (
        len(frames) == len(record.user) // 1920 and np.isfinite(sf.read(str(tmp_path / "out.wav"))[0]).all()
    )
    _replay_with_stock_moshi(out, frames)
