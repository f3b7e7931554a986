"""Every way a training run can be set up wrong ends in a clear error that says what to fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import torch
from moshi.models import loaders as moshi_loaders

from kame.data.dataset import CODES_FOLDER, ShardWriter, read_records
from kame.frontend import presets
from kame.frontend.checkpoint import Frontend, train_tiny_tokenizer
from kame.train.data import DataError, load_records

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NO_TORCH_COMPILE": "1"}


def _kame(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kame", *args], capture_output=True, text=True, env=ENV, timeout=300
    )


def _uncached_copy(dataset: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for path in dataset.glob("*.tar"):
        shutil.copy(path, folder / path.name)
    return folder


def test_empty_and_foreign_datasets(frontend, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="not a kame dataset .*kame data build"):
        load_records([empty], frontend)
    with pytest.raises(DataError, match="no such dataset folder"):
        load_records([tmp_path / "missing"], frontend)
    foreign = tmp_path / "foreign"
    ShardWriter(foreign).write(0, {"id": "x", "sample_rate": 24000}, np.zeros(1920), np.zeros(1920))
    with pytest.raises(DataError, match="'x' is not a kame-dialogue/1 record .*missing duration"):
        load_records([foreign], frontend)
    proc = _kame("train", "--init", "random:tiny", "--data", str(empty), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "not a kame dataset" in proc.stderr and "Traceback" not in proc.stderr


def test_tokenizer_and_frame_rate_mismatches(frontend, dataset):
    small = sentencepiece.SentencePieceProcessor(model_proto=train_tiny_tokenizer(vocab_size=600))
    wrong_tokenizer = Frontend(frontend.lm, frontend.mimi, small, frontend.lm_config)
    with pytest.raises(DataError, match="600 pieces but the LM's text_card is 1000"):
        load_records([dataset], wrong_tokenizer)
    config = presets.mimi_config("tiny")
    config["seanet"]["ratios"] = [8, 6, 5, 2]  # a 25 Hz codec
    config["frame_rate"] = 25.0
    fast = moshi_loaders.get_mimi(None, config, device="cpu", num_codebooks=8)
    assert fast.frame_rate == 25.0
    wrong_rate = Frontend(frontend.lm, fast, frontend.tokenizer, frontend.lm_config)
    with pytest.raises(DataError, match="Mimi runs at 25.0 Hz; kame datasets are aligned at 12.5 Hz"):
        load_records([dataset], wrong_rate)


def test_missing_cache_without_encoding_then_kame_data_encode(frontend, tiny_checkpoint, dataset, tmp_path):
    folder = _uncached_copy(dataset, tmp_path / "qa")
    with pytest.raises(DataError, match=r"6 record\(s\) have no cached Mimi codes .*kame data encode"):
        load_records([folder], frontend, encode_missing=False)
    # codes cached for another codec are not used, and the error says so
    # (every tiny front-end shares the shipped tiny Mimi, so the other codec is a fresh moshi one)
    other_mimi = moshi_loaders.get_mimi(None, presets.mimi_config("tiny"), device="cpu", num_codebooks=8)
    other = Frontend(frontend.lm, other_mimi, frontend.tokenizer, frontend.lm_config)
    load_records([folder], other)
    with pytest.raises(DataError, match="codes of another Mimi"):
        load_records([folder], frontend, encode_missing=False)
    proc = _kame("data", "encode", str(folder), "--frontend", tiny_checkpoint)
    assert proc.returncode == 0, proc.stderr
    assert "6 encoded, 0 already cached" in proc.stdout
    assert len(list((folder / CODES_FOLDER).glob("*.npz"))) == 12  # both Mimis' codes, side by side
    records = load_records([folder], frontend, encode_missing=False)
    assert len(records) == 6
    proc = _kame("data", "encode", str(folder), "--frontend", tiny_checkpoint)
    assert "0 encoded, 6 already cached" in proc.stdout
    proc = _kame("data", "encode", str(tmp_path / "nothing"), "--frontend", tiny_checkpoint)
    assert proc.returncode == 2 and "no such dataset folder" in proc.stderr


def test_out_holding_another_run_or_other_files(dataset, tmp_path):
    out = tmp_path / "out"
    base = ["train", "--init", "random:tiny", "--data", str(dataset), "--out", str(out), "--steps", "2",
            "--batch-size", "2", "--seq-len", "16", "--no-progress"]  # fmt: skip
    proc = _kame(*base)
    assert proc.returncode == 0, proc.stderr
    proc = _kame(*base, "--lr", "0.01")
    assert (
        proc.returncode == 2 and "holds the state of another run (lr: 3e-05 there, 0.01 now)" in proc.stderr
    )
    # a run written before a setting existed ran with its default, and resumes
    run_file = out / "run.json"
    stored = json.loads(run_file.read_text())
    del stored["identity"]["live_lead"]
    run_file.write_text(json.dumps(stored))
    proc = _kame(*base, "--steps", "3")
    assert proc.returncode == 0, proc.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    proc = _kame("train", "--init", "random:tiny", "--data", str(dataset), "--out", str(foreign))
    assert proc.returncode == 2 and "not empty and was not written by kame train" in proc.stderr


def test_bad_settings(tmp_path, dataset):
    bad = tmp_path / "bad.yaml"
    bad.write_text("init: random:tiny\nbatchsize: 4\n")
    proc = _kame("train", "--config", str(bad), "--data", str(dataset), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "unknown setting(s) batchsize" in proc.stderr
    proc = _kame("train", "--init", "random:tiny", "--data", str(dataset), "--out", str(tmp_path / "o"),
                 "--batch-size", "6", "--micro-batch-size", "4")  # fmt: skip
    assert proc.returncode == 2 and "--micro-batch-size 4 must divide --batch-size 6" in proc.stderr
    proc = _kame("train", "--data", str(dataset), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "--init is required" in proc.stderr
    proc = _kame(
        "train", "--init", str(tmp_path / "nowhere"), "--data", str(dataset), "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 2 and "no such checkpoint folder" in proc.stderr


def test_bad_lora_and_process_settings():
    import argparse

    from kame.train.config import ConfigError, add_arguments, build_config
    from kame.train.distributed import World
    from kame.train.loop import Trainer
    from kame.train.state import RunError

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--init", "random:tiny", "--data", "d", "--out", "o"]
    with pytest.raises(ConfigError, match="--lora-rank must be at least 1"):
        build_config(parser.parse_args([*base, "--lora-rank", "0"]))
    with pytest.raises(ConfigError, match="--train depformer trains the depformer fully; with --lora-rank"):
        build_config(parser.parse_args([*base, "--lora-rank", "8", "--train", "depformer"]))
    config = build_config(parser.parse_args([*base, "--batch-size", "6", "--micro-batch-size", "2"]))
    with pytest.raises(RunError, match="--batch-size 6 must be a multiple of the process count \\(2\\) x"):
        Trainer(config, world=World(rank=0, world_size=2))


def test_codec_with_more_codes_than_the_lm_reads(frontend, dataset, tmp_path):
    from moshi.quantization.core_vq import EuclideanCodebook

    config = presets.mimi_config("tiny")
    config["quantizer"]["bins"] = 4096  # the tiny LM's codebooks have 256 entries
    wide = moshi_loaders.get_mimi(None, config, device="cpu", num_codebooks=8)
    for module in wide.quantizer.modules():
        if isinstance(module, EuclideanCodebook):  # trained-looking codebooks, so codes spread out
            module.embedding_sum.data.normal_()
            module.cluster_usage.data.fill_(1.0)
            module._initialized.data.fill_(1.0)
    folder = _uncached_copy(dataset, tmp_path / "qa")
    with pytest.raises(DataError, match="codebooks have 256 entries; the codes come from another codec"):
        load_records([folder], Frontend(frontend.lm, wide, frontend.tokenizer, frontend.lm_config))


def test_bad_augmentation_settings_name_what_to_write():
    """Shares outside [0, 1] and decoy counts that are not a [min, max] pair are refused by name."""
    from kame.train.config import ConfigError, TrainConfig

    base = {"data": ["d"], "out": "o", "init": "random:tiny"}
    TrainConfig(**base, decoy_prefix=0.5, text_noise=0.1, decoy_events=(0, 3)).validate()  # good ones pass
    with pytest.raises(ConfigError, match="decoy-prefix 1.5: write a share between 0 and 1"):
        TrainConfig(**base, decoy_prefix=1.5).validate()
    with pytest.raises(ConfigError, match="text-noise -0.1: write a share between 0 and 1"):
        TrainConfig(**base, text_noise=-0.1).validate()
    with pytest.raises(ConfigError, match="live-drafts 2.0: write a share between 0 and 1"):
        TrainConfig(**base, live_drafts=2.0).validate()
    with pytest.raises(ConfigError, match=r"--live-lead \[8, 4\]: write \[min, max\]"):
        TrainConfig(**base, live_lead=(8, 4)).validate()
    with pytest.raises(ConfigError, match=r"--decoy-events \[3, 1\]: write \[min, max\]"):
        TrainConfig(**base, decoy_events=(3, 1)).validate()
    with pytest.raises(ConfigError, match="--mute-audio-steps must be >= 0"):
        TrainConfig(**base, mute_audio_steps=-1).validate()
    for share in (0.0, 1.5):
        with pytest.raises(ConfigError, match=f"--depformer-share {share}: write a share of the frames"):
            TrainConfig(**base, depformer_share=share).validate()


def test_records_load_in_id_order_whatever_order_the_build_wrote_them(frontend, dataset, records, tmp_path):
    """Two builds of one source hold their records in the order the workers finished them."""
    reordered = tmp_path / "reordered"
    writer = ShardWriter(reordered)
    for index, record in enumerate(reversed(list(read_records(dataset)))):
        writer.write(index, record.meta, record.user, record.assistant)
    assert [r.id for r in read_records(reordered)] == [r.id for r in read_records(dataset)][::-1]
    loaded = load_records([reordered], frontend)
    assert [r.id for r in loaded] == sorted(r.id for r in records) == [r.id for r in records]
    for mine, theirs in zip(loaded, records, strict=True):
        assert torch.equal(mine.text, theirs.text) and torch.equal(mine.user_codes, theirs.user_codes)
    assert [r.id for r in load_records([reordered], frontend, limit=2)] == [r.id for r in records][:2]
