"""The loop in-process: which parameters each ``--train`` mode moves, gradient accumulation and activation
checkpointing leave a step unchanged, evaluation reports losses and answer accuracy."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from kame.train.config import build_config
from kame.train.loop import Trainer, lr_factor


def _trainer(tmp_path, dataset, name: str, **settings) -> Trainer:
    values = {
        "config": None, "init": "random:tiny", "data": str(dataset), "out": str(tmp_path / name),
        "steps": 2, "batch_size": 4, "seq_len": 32, "lr": 1e-2, "warmup": 0, "progress": False,
        "save_every": 100, "log_every": 1, **settings,
    }  # fmt: skip
    return Trainer(build_config(argparse.Namespace(**values)), echo=lambda _: None)


@pytest.mark.parametrize("mode", ["embeddings", "depformer"])
def test_train_modes_move_only_their_parameters(tmp_path, dataset, mode):
    trainer = _trainer(tmp_path, dataset, mode, train=mode)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step()
    moved = {k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])}
    assert "oracle_emb.weight" in moved  # the oracle embedding always trains
    if mode == "embeddings":
        assert moved and all("emb" in k for k in moved) and "text_emb.weight" in moved
    else:
        assert {k for k in moved if k != "oracle_emb.weight"} and all(
            k.startswith(("depformer", "linears.")) for k in moved - {"oracle_emb.weight"}
        )
        assert not any(k.startswith("transformer.") for k in moved)


def test_accumulation_and_checkpointing_give_the_same_step(tmp_path, dataset):
    from kame.train.collate import collate
    from kame.train.losses import compute_losses

    whole = _trainer(tmp_path, dataset, "whole", batch_size=2)
    samples = whole.samples(0)
    with torch.no_grad():
        alone = []
        for sample in samples:
            codes, oracle = collate([sample])
            output = whole.model(codes, oracle=oracle)
            alone.append(float(compute_losses(output, codes, whole.model.dep_q, whole.weights).loss))
    metrics = whole.train_step()
    halves = _trainer(tmp_path, dataset, "halves", batch_size=2, micro_batch_size=1)
    assert [s.record_id for s in halves.samples(0)] == [s.record_id for s in samples]
    split = halves.train_step()
    # one sample per micro-batch: the mean of the per-sample losses
    assert split["loss"] == pytest.approx(sum(alone) / 2, rel=1e-6)
    assert metrics["loss"] != pytest.approx(split["loss"], rel=1e-9)  # pooled over the batch instead
    checkpointed = _trainer(tmp_path, dataset, "ckpt", batch_size=2, activation_checkpointing=True)
    again = checkpointed.train_step()
    assert again["loss"] == pytest.approx(metrics["loss"], rel=1e-6)
    assert again["grad_norm"] == pytest.approx(metrics["grad_norm"], rel=1e-4)


def test_evaluation_reports_losses_and_answer_accuracy(tmp_path, dataset):
    trainer = _trainer(tmp_path, dataset, "eval", eval_data=str(dataset), eval_every=1, steps=1)
    trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()]
    (evaluation,) = [r for r in rows if "eval_loss" in r]
    assert evaluation["step"] == 1
    for key in ("eval_loss", "eval_text_loss", "eval_audio_loss"):
        assert evaluation[key] > 0
    for key in ("eval_answer_accuracy", "eval_answer_accuracy_no_oracle"):
        assert 0.0 <= evaluation[key] <= 1.0


def test_learning_rate_schedule(tmp_path, dataset):
    config = _trainer(tmp_path, dataset, "lr", warmup=4, steps=20).config
    assert [lr_factor(s, config) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    config.schedule = "cosine"
    assert lr_factor(4, config) == pytest.approx(1.0)
    assert lr_factor(20, config) == pytest.approx(config.min_lr_ratio)
    assert lr_factor(12, config) == pytest.approx(config.min_lr_ratio + (1 - config.min_lr_ratio) / 2)


def test_resume_ignores_states_cut_short(tmp_path, dataset):
    trainer = _trainer(tmp_path, dataset, "cut", steps=2, save_every=1)
    trainer.run()
    states = tmp_path / "cut" / "state"
    (states / ".tmp-step_000003").mkdir()  # killed while writing a state
    (states / ".tmp-step_000003" / "model.safetensors").write_bytes(b"partial")
    (states / "step_000004").mkdir()  # a folder without its completion mark
    resumed = _trainer(tmp_path, dataset, "cut", steps=2, save_every=1)
    assert resumed.step == 2 and not (states / ".tmp-step_000003").exists()
    assert torch.equal(resumed.model.oracle_emb.weight, trainer.model.oracle_emb.weight)
    moved = _trainer(tmp_path, dataset, "cut", steps=3, save_every=1, micro_batch_size=2)
    assert moved.step == 2  # memory knobs may change on resume; the trajectory settings may not


def test_plain_moshi_init_gets_its_oracle_embedding_from_the_text_embedding(
    tmp_path, dataset, tiny_checkpoint
):
    import shutil

    from safetensors.torch import load_file, save_file

    from kame.frontend.checkpoint import load_frontend

    plain = tmp_path / "plain"
    shutil.copytree(tiny_checkpoint, plain)
    weights = load_file(str(plain / "model.safetensors"))
    del weights["oracle_emb.weight"]
    save_file(weights, str(plain / "model.safetensors"))
    trainer = _trainer(tmp_path, dataset, "from-plain", init=str(plain), steps=1)
    assert torch.equal(trainer.model.oracle_emb.weight, trainer.model.text_emb.weight)
    trainer.run()
    trained = load_frontend(tmp_path / "from-plain")
    assert not torch.equal(trained.lm.oracle_emb.weight, weights["text_emb.weight"])
    assert trained.lm.text_card == trainer.model.text_card


def test_muted_audio_steps_see_no_audio_then_all_of_it(tmp_path, dataset):
    """``mute_audio_steps``: the LM's audio inputs and targets are moshi's zero token, so a muted step
    is a text-and-oracle step (the same loss as a forward pass with the audio blanked by hand)."""
    from kame.train.collate import ZERO, collate
    from kame.train.losses import compute_losses

    trainer = _trainer(tmp_path, dataset, "mute", steps=2, mute_audio_steps=1, batch_size=2)
    codes, oracle = collate(trainer.samples(0))
    blanked = codes.clone()
    blanked[:, 1:] = ZERO
    with torch.no_grad():
        output = trainer.model(blanked, oracle=oracle)
        expected = compute_losses(output, blanked, trainer.model.dep_q, trainer.weights)
    depformer = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith("depformer")}
    muted = trainer.train_step()
    assert muted["audio_muted"] and muted["audio_loss"] == 0.0
    assert muted["text_loss"] == pytest.approx(float(expected.text_loss), rel=1e-5) and muted["text_loss"] > 0
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in depformer.items())  # nothing to predict: no update
    heard = trainer.train_step()
    assert not heard["audio_muted"] and heard["audio_loss"] > 0


def test_no_audio_weight_hears_audio_but_skips_the_depformer(tmp_path, dataset):
    """``audio_weight: 0``: audio is heard (unlike a muted step) and the text loss is a full forward
    pass's, but the depformer, whose loss counts for nothing, is not run."""
    from kame.train.collate import collate
    from kame.train.losses import compute_losses

    trainer = _trainer(tmp_path, dataset, "text", steps=1, batch_size=2, audio_weight=0.0)
    codes, oracle = collate(trainer.samples(0))
    with torch.no_grad():
        expected = compute_losses(
            trainer.model(codes, oracle=oracle), codes, trainer.model.dep_q, trainer.weights
        )
    depformer = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith("depformer")}
    step = trainer.train_step()
    assert not step["audio_muted"] and step["audio_loss"] == 0.0 and float(expected.audio_loss) > 0
    assert step["text_loss"] == pytest.approx(float(expected.text_loss), rel=1e-5)
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in depformer.items())


def test_depformer_share_scores_audio_on_the_steps_drawn_frames(tmp_path, dataset):
    """``depformer_share``: the audio loss of a step is the full pass's loss restricted to the frames
    drawn for that step (each codebook's cells at frame - delay), and the text loss is unchanged."""
    from kame.train.collate import collate
    from kame.train.loop import depformer_positions
    from kame.train.losses import LossWeights, audio_loss

    trainer = _trainer(tmp_path, dataset, "share", steps=1, batch_size=2, depformer_share=0.25)
    config = trainer.config
    positions = depformer_positions(config, 0, trainer.device)
    assert len(positions) == 8 and torch.equal(positions, depformer_positions(config, 0, trainer.device))
    assert not torch.equal(positions, depformer_positions(config, 1, trainer.device))
    codes, oracle = collate(trainer.samples(0))
    lm = trainer.model
    with torch.no_grad():
        full = lm(codes, oracle=oracle)
    chosen = torch.zeros(lm.dep_q, config.seq_len, dtype=torch.bool)
    for k, delay in enumerate(lm.delays[lm.audio_offset : lm.audio_offset + lm.dep_q]):
        frames = positions - delay
        chosen[k, frames[frames >= 0]] = True
    restricted = type(full)(full.logits, full.mask & chosen, full.text_logits, full.text_mask)
    weights: LossWeights = trainer.weights
    expected = audio_loss(
        restricted, codes[:, 1 : 1 + lm.dep_q], weights.semantic_weight, weights.acoustic_weight
    )
    whole = audio_loss(full, codes[:, 1 : 1 + lm.dep_q], weights.semantic_weight, weights.acoustic_weight)
    step = trainer.train_step()
    assert step["audio_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert step["audio_loss"] != pytest.approx(float(whole), rel=1e-4)


def test_a_random_start_is_set_up_to_find_its_oracle(tmp_path, dataset):
    """``--init random:PRESET`` starts as ``kame.train.random_start`` says: the oracle table copies the
    text table (the released upgrade rule), the text head is tied to it, and the audio tables are zero."""
    trainer = _trainer(tmp_path, dataset, "start", steps=1)
    lm = trainer.model
    assert torch.equal(lm.oracle_emb.weight, lm.text_emb.weight)
    assert torch.equal(lm.text_linear.weight, lm.text_emb.weight[: lm.text_card])
    assert all(not table.weight.any() for table in lm.emb)
    assert lm.text_emb.weight.std() > 0.01  # the rest stays moshi's random initialisation
