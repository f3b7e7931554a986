"""Checkpoints in the released layout: round trips, upgrades, LoRA and every error a user can meet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sentencepiece
import torch
from moshi.models import loaders as moshi_loaders
from moshi.modules.lora import replace_all_linear_with_lora
from safetensors.torch import load_file, save_file

from kame.frontend.checkpoint import (
    CheckpointError,
    init_checkpoint,
    load_frontend,
    resolve_checkpoint,
)


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny checkpoint that a test may break."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


def _logits(frontend, seed: int = 0) -> torch.Tensor:
    lm = frontend.lm
    g = torch.Generator().manual_seed(seed)
    codes = torch.cat(
        [
            torch.randint(0, lm.text_card, (1, 1, 8), generator=g),
            torch.randint(0, lm.card, (1, lm.n_q, 8), generator=g),
        ],
        dim=1,
    )
    oracle = torch.randint(0, lm.text_card + 1, (1, 8), generator=g)
    with torch.no_grad():
        return lm(codes, oracle=oracle).text_logits


def test_layout_is_readable_by_moshis_own_checkpoint_info(tiny_checkpoint):
    folder = Path(tiny_checkpoint)
    config = json.loads((folder / "config.json").read_text())
    for key in ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name"):
        assert (folder / config[key]).is_file()
    info = moshi_loaders.CheckpointInfo.from_hf_repo(
        "unused", config_path=folder / "config.json", moshi_weights=folder / config["moshi_name"],
        mimi_weights=folder / config["mimi_name"], tokenizer=folder / config["tokenizer_name"],
        mimi_config_path=folder / config["mimi_config_name"],
    )  # fmt: skip
    assert info.lm_config["text_card"] == 1000 and "moshi_name" not in info.lm_config
    state = load_file(str(folder / config["moshi_name"]))
    assert state["oracle_emb.weight"].shape == (1001, 64)  # text_card + 1 rows


def test_round_trip(tiny_checkpoint, tiny_frontend, tmp_path):
    from kame.frontend.checkpoint import save_checkpoint, train_tiny_tokenizer

    out = save_checkpoint(tmp_path / "copy", tiny_frontend, train_tiny_tokenizer(), json.loads(
        (Path(tiny_checkpoint) / "mimi_config.json").read_text()))  # fmt: skip
    again = load_frontend(out)
    for key, value in tiny_frontend.lm.state_dict().items():
        assert torch.equal(value, again.lm.state_dict()[key]), key
    assert torch.equal(_logits(tiny_frontend), _logits(again))
    assert not again.upgraded_from_moshi


def test_plain_moshi_weights_are_upgraded(ckpt):
    path = ckpt / "model.safetensors"
    state = load_file(str(path))
    save_file({k: v for k, v in state.items() if not k.startswith("oracle_emb.")}, str(path))
    frontend = load_frontend(ckpt)
    assert frontend.upgraded_from_moshi
    assert torch.equal(frontend.lm.oracle_emb.weight, frontend.lm.text_emb.weight)


def test_lora_weights_are_applied(ckpt, tiny_frontend):
    reference = load_frontend(ckpt)
    replace_all_linear_with_lora(reference.lm, rank=4, scaling=2.0)
    torch.manual_seed(1)
    lora_state = {}
    for name, param in reference.lm.named_parameters():
        if ".lora_" in name:
            param.data.normal_(std=0.05)
            lora_state[name] = param.detach().clone()
    save_file(lora_state, str(ckpt / "lora.safetensors"))
    config = json.loads((ckpt / "config.json").read_text())
    config.update(lora=True, lora_rank=4, lora_scaling=2.0, lora_name="lora.safetensors")
    (ckpt / "config.json").write_text(json.dumps(config))

    with_lora = load_frontend(ckpt)
    assert torch.allclose(_logits(with_lora), _logits(reference), atol=1e-5)
    assert not torch.allclose(_logits(with_lora), _logits(tiny_frontend), atol=1e-3)

    broken = dict(lora_state)
    broken.pop(next(iter(broken)))
    save_file(broken, str(ckpt / "lora.safetensors"))
    with pytest.raises(CheckpointError, match="LoRA weights do not match"):
        load_frontend(ckpt)


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_frontend(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_frontend(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_frontend(tmp_path)


def test_missing_file_named_in_config(ckpt):
    (ckpt / "mimi.safetensors").unlink()
    with pytest.raises(CheckpointError, match="mimi_name='mimi.safetensors'"):
        load_frontend(ckpt)


def test_unknown_config_key(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["flux_capacitor"] = 3
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not an LM constructor argument"):
        load_frontend(ckpt)


def test_shape_mismatch(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["dim"] = 32
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_frontend(ckpt)


def test_missing_and_unknown_keys(ckpt):
    path = ckpt / "model.safetensors"
    state = load_file(str(path))
    state.pop("text_linear.weight")
    state["some.extra.weight"] = torch.zeros(2)
    save_file(state, str(path))
    with pytest.raises(
        CheckpointError, match=r"1 missing keys .*text_linear.weight.*1 unknown keys .*some.extra"
    ):
        load_frontend(ckpt)


def test_tokenizer_of_another_model(ckpt):
    buf = __import__("io").BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["hello world, a small corpus for a small tokenizer"] * 20),
        model_writer=buf, vocab_size=40, model_type="bpe", minloglevel=2, hard_vocab_limit=False,
    )  # fmt: skip
    (ckpt / "tokenizer.model").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="text_card is 1000"):
        load_frontend(ckpt)
    (ckpt / "tokenizer.model").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a SentencePiece model"):
        load_frontend(ckpt)


def test_mimi_weights_of_another_shape(ckpt):
    save_file({"encoder.model.0.conv.conv.weight": torch.zeros(3, 3)}, str(ckpt / "mimi.safetensors"))
    with pytest.raises(CheckpointError, match="Mimi weights do not match"):
        load_frontend(ckpt)


@pytest.mark.filterwarnings("ignore:Repository SakanaAI/kame contains no config.json")
def test_hub_specs_fail_clearly_offline(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # as on a machine with no hub
    with pytest.raises(CheckpointError, match="hf://owner/name"):
        resolve_checkpoint("hf://just-a-name")
    with pytest.raises(CheckpointError, match="could not fetch hf://SakanaAI/kame"):
        resolve_checkpoint("hf://SakanaAI/kame")


def test_init_refuses_to_overwrite(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        init_checkpoint(tiny_checkpoint)


def test_the_wide_tiny_preset_is_the_tiny_layout_at_dim_128_on_disk_and_in_memory(tiny_frontend, tmp_path):
    """``tiny-wide`` (the shipped default's shape): moshi's layout as ``tiny``, twice as wide with twice
    the heads (both 32 wide), with the same hearing Mimi and tokenizer, written by ``kame checkpoint init
    --preset tiny-wide``."""
    folder = init_checkpoint(tmp_path / "wide", preset="tiny-wide", seed=3)
    wide = load_frontend(folder)
    assert wide.lm.dim == 128 and tiny_frontend.lm.dim == 64
    a, b = wide.lm_config, tiny_frontend.lm_config
    assert {k for k in {*a, *b} if a.get(k) != b.get(k)} == {"dim", "num_heads"}
    assert a["dim"] // a["num_heads"] == b["dim"] // b["num_heads"] == 32
    assert len(wide.lm.transformer.layers) == len(tiny_frontend.lm.transformer.layers) == 2
    assert wide.tokenizer.serialized_model_proto() == tiny_frontend.tokenizer.serialized_model_proto()
    for key, value in tiny_frontend.mimi.state_dict().items():
        assert torch.equal(wide.mimi.state_dict()[key], value), key
    in_memory = load_frontend("random:tiny-wide")
    assert in_memory.lm.dim == 128 and _logits(in_memory).shape == _logits(wide).shape
    with pytest.raises(CheckpointError, match="tiny-wide"):
        init_checkpoint(tmp_path / "big", preset="moshi-7b")


def test_legacy_folder_without_config_is_read_as_moshi_reads_it(tiny_checkpoint, tmp_path, caplog):
    """Older Kyutai uploads have no config.json: moshi assumes Moshi 7B (its _lm_kwargs) and file names."""
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for ours, moshi_name in [
        ("model.safetensors", moshi_loaders.MOSHI_NAME),
        ("mimi.safetensors", moshi_loaders.MIMI_NAME),
        ("tokenizer.model", moshi_loaders.TEXT_TOKENIZER_NAME),
    ]:
        shutil.copy(Path(tiny_checkpoint) / ours, legacy / moshi_name)
    with caplog.at_level("WARNING"):
        info = resolve_checkpoint(legacy)
    assert "legacy Moshi folder" in caplog.text and "moshiko's default LM settings" in caplog.text
    assert info.lm_config is None and info.lm_gen_config == {} and info.model_type == "moshi"
    assert Path(info.moshi_weights) == legacy / moshi_loaders.MOSHI_NAME
    assert Path(info.tokenizer) == legacy / moshi_loaders.TEXT_TOKENIZER_NAME
    # These are tiny weights, not Moshi 7B: the defaults are applied and the mismatch is named clearly.
    with pytest.raises(CheckpointError, match="do not match config.json: .*shape mismatches"):
        load_frontend(legacy)
    (legacy / moshi_loaders.MIMI_NAME).unlink()
    with pytest.raises(CheckpointError, match="not a legacy Moshi folder either"):
        load_frontend(legacy)


def test_file_keys_may_name_files_elsewhere(ckpt, tiny_frontend, tmp_path):
    """moshi's own syntax (file://, hf://owner/name/file) and paths relative to the folder."""
    from kame.frontend.checkpoint import base_file_keys

    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((ckpt / "config.json").read_text())
    shutil.move(ckpt / "model.safetensors", other / "weights.safetensors")
    config.update(moshi_name=f"file://{other}/weights.safetensors", tokenizer_name="./tokenizer.model")
    (ckpt / "config.json").write_text(json.dumps(config))
    assert torch.equal(_logits(load_frontend(ckpt)), _logits(tiny_frontend))
    keys = base_file_keys(ckpt)
    assert keys["moshi_name"] == f"file://{other}/weights.safetensors"
    assert keys["mimi_name"] == f"file://{ckpt.resolve()}/mimi.safetensors"
    config.update(moshi_name="file:///nowhere/model.safetensors")
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="nowhere/model.safetensors does not exist"):
        load_frontend(ckpt)
    config.update(moshi_name="hf://owner-only/model.safetensors")
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"hf://owner/name\[@revision\]/file"):
        load_frontend(ckpt)


def test_lora_files_may_hold_fully_trained_tensors(ckpt, tiny_frontend):
    """Besides lora_A/lora_B, an adapter file may replace non-linear tensors (the oracle embedding)."""
    reference = load_frontend(ckpt)
    replace_all_linear_with_lora(reference.lm, rank=2, scaling=2.0)
    torch.manual_seed(2)
    state = {}
    for name, param in reference.lm.named_parameters():
        if ".lora_" in name or name == "oracle_emb.weight":
            param.data.normal_(std=0.05)
            state[name] = param.detach().clone()
    save_file(state, str(ckpt / "lora.safetensors"))
    config = json.loads((ckpt / "config.json").read_text())
    config.update(lora=True, lora_rank=2, lora_scaling=2.0, lora_name="lora.safetensors")
    (ckpt / "config.json").write_text(json.dumps(config))
    loaded = load_frontend(ckpt)
    assert torch.equal(loaded.lm.oracle_emb.weight, state["oracle_emb.weight"])
    assert torch.allclose(_logits(loaded), _logits(reference), atol=1e-5)
    linear = {**state, "text_linear.weight": tiny_frontend.lm.text_linear.weight.detach().clone()}
    save_file(linear, str(ckpt / "lora.safetensors"))
    with pytest.raises(CheckpointError, match="1 unknown .*text_linear.weight"):
        load_frontend(ckpt)  # a linear's own weight belongs in a merged checkpoint
    wrong = {**state, "oracle_emb.weight": torch.zeros(3, 64)}
    save_file(wrong, str(ckpt / "lora.safetensors"))
    with pytest.raises(CheckpointError, match="1 shape mismatches .*oracle_emb.weight"):
        load_frontend(ckpt)
    from kame.frontend.checkpoint import base_file_keys

    with pytest.raises(CheckpointError, match="itself a LoRA checkpoint; merge it first"):
        base_file_keys(ckpt)
