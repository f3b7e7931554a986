"""Kyutai STT through moshi, on a tiny random model of the STT's shape (the real weights are not here).

What is checked: the token-to-word recipe (boundaries, timing), that a checkpoint folder in the moshi
layout loads, that sessions step together in batch slots, that the pause head ends utterances, and that
missing weights or GPU give an error saying what to do. What is not: recognition quality, which needs
``kyutai/stt-1b-en_fr-candle`` itself.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import sentencepiece
import torch
from safetensors.torch import save_file

from kame.backend.stt import STTError, create_stt
from kame.backend.stt.kyutai import KyutaiConfig, KyutaiModels, KyutaiSTT, WordDecoder
from kame.frames import FRAME_RATE
from kame.frontend.checkpoint import preset_mimi, train_tiny_tokenizer
from kame.frontend.presets import mimi_config

STT_LM = {  # the STT's layout (audio in, text out, no depformer, four pause heads), shrunk
    "dim": 32,
    "text_card": 1000,
    "existing_text_padding_id": 3,
    "n_q": 8,
    "dep_q": 0,
    "card": 256,
    "num_heads": 2,
    "num_layers": 1,
    "hidden_scale": 2,
    "causal": True,
    "context": 100,
    "max_period": 10000,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "delays": [0] * 9,
    "extra_heads_num_heads": 4,
    "extra_heads_dim": 6,
}


@pytest.fixture(scope="module")
def tokenizer():
    return sentencepiece.SentencePieceProcessor(model_proto=train_tiny_tokenizer())


@pytest.fixture(scope="module")
def stt_folder(tmp_path_factory, tokenizer):
    """A checkpoint folder in the layout of kyutai/stt-1b-en_fr-candle, with tiny random weights."""
    from moshi.models.lm import LMModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("kyutai")
    lm = LMModel(**STT_LM)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(folder / "model.safetensors"))
    mimi = preset_mimi("tiny")
    save_file({k: v.contiguous() for k, v in mimi.state_dict().items()}, str(folder / "mimi.safetensors"))
    (folder / "mimi_config.json").write_text(json.dumps(mimi_config("tiny")))
    (folder / "tokenizer.model").write_bytes(tokenizer.serialized_model_proto())
    config = dict(
        STT_LM,
        moshi_name="model.safetensors",
        mimi_name="mimi.safetensors",
        mimi_config_name="mimi_config.json",
        tokenizer_name="tokenizer.model",
        stt_config={"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0},
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_tokens_become_timed_words(tokenizer):
    decoder = WordDecoder(tokenizer, offset_s=1.0)
    hello, world = tokenizer.encode("hello"), tokenizer.encode("world")
    # 12 frames of padding, a word boundary, "hello", padding, a boundary, "world", padding.
    stream = [3] * 12 + [0, *hello, 3, 3, 0, *world, 3, 3, 3]
    changes = [decoder.feed(token) for token in stream]
    assert sum(changes) == len(hello) + len(world)  # the text changes with every piece
    words = decoder.current()
    assert [w.text for w in words] == ["hello", "world"]
    first_start = 13 / FRAME_RATE - 1.0  # the frame after the boundary, minus prefix and delay
    assert words[0].start == pytest.approx(first_start, abs=1e-3)
    assert words[0].end == pytest.approx((13 + len(hello) + 2) / FRAME_RATE - 1.0, abs=1e-3)
    assert words[1].start == pytest.approx(words[0].end + 1 / FRAME_RATE, abs=1e-3)
    taken = decoder.take_utterance()
    assert [w.text for w in taken] == ["hello", "world"] and decoder.current() == []


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")),
]


def _engine(stt_folder, device: str = "cpu", **overrides) -> KyutaiSTT:
    return create_stt(f"kyutai:{stt_folder}", device=device, dtype="float32", max_streams=2, **overrides)


async def _run_sessions(engine, pcms):
    streams = [engine.open_stream(f"s{i}") for i in range(len(pcms))]
    results = [[] for _ in pcms]

    async def read(index, stream):
        async for transcript in stream.transcripts():
            results[index].append(transcript)

    for stream in streams:
        await stream.start()
    readers = [asyncio.create_task(read(i, s)) for i, s in enumerate(streams)]
    for offset in range(0, max(p.size for p in pcms), 1920):
        for stream, pcm in zip(streams, pcms, strict=True):
            if offset < pcm.size:
                stream.push(pcm[offset : offset + 1920], 24000)
    for stream in streams:
        stream.finish()
    await asyncio.gather(*readers)
    return streams, results


@pytest.mark.parametrize("device", DEVICES)
def test_a_checkpoint_folder_loads_and_sessions_step_together(stt_folder, device):
    engine = _engine(stt_folder, device)
    rng = np.random.default_rng(0)
    pcms = [(rng.standard_normal(24000 * n) * 0.1).astype(np.float32) for n in (2, 3)]
    try:
        streams, results = asyncio.run(_run_sessions(engine, pcms))
        assert engine.has_pause_heads and engine.audio_delay_s == 0.5
        for stream, pcm, transcripts in zip(streams, pcms, results, strict=True):
            assert stream.stats.audio_s == pytest.approx(pcm.size / 24000)
            assert stream.error is None
            for t in transcripts:
                assert 0 <= t.audio_t <= pcm.size / 24000 + 1e-6
                for w in t.words:
                    assert 0 <= w.start <= w.end
        # Both sessions went through the same batched steps: fewer steps than frames fed in total.
        frames = sum(int(np.ceil(p.size / 1920)) for p in pcms) + 2 * (1 + int(np.ceil(0.5 * 12.5)) + 13)
        assert engine.steps < frames
        # Slots are given back: two new sessions fit again.
        asyncio.run(_run_sessions(engine, pcms[:1] * 2))
    finally:
        engine.close_blocking()


@pytest.mark.parametrize("device", DEVICES)
def test_the_pause_head_ends_utterances(stt_folder, device):
    """With the pause head's weights zeroed, its probability is 1/6 for every frame."""
    pcm = (np.random.default_rng(1).standard_normal(24000 * 3) * 0.1).astype(np.float32)
    finals_by_threshold = {}
    for threshold in (0.1, 0.5):
        engine = _engine(stt_folder, device, pause_threshold=threshold)
        engine.load_blocking()
        with torch.no_grad():
            engine.models.lm.extra_heads[engine.config.pause_head].weight.zero_()
        try:
            _, results = asyncio.run(_run_sessions(engine, [pcm]))
        finally:
            engine.close_blocking()
        transcripts = results[0]
        if not any(t.kind == "partial" for t in transcripts):
            pytest.skip("this random model produced no text tokens")
        finals_by_threshold[threshold] = [t for t in transcripts if t.kind == "final"]
    # Above the threshold after every word: utterances end one after another; below it: only at the end.
    assert len(finals_by_threshold[0.1]) >= 2
    assert [f.utterance for f in finals_by_threshold[0.1]] == list(range(len(finals_by_threshold[0.1])))
    assert len(finals_by_threshold[0.5]) == 1


def test_missing_weights_say_how_to_get_them(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine = create_stt("kyutai", device="cpu")
    with pytest.raises(STTError, match="huggingface-cli download kyutai/stt-1b-en_fr-candle"):
        engine.load_blocking()
    with pytest.raises(STTError, match="no config.json"):
        create_stt("kyutai:/", device="cpu").load_blocking()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without a GPU")
def test_no_gpu_says_what_to_use():
    with pytest.raises(STTError, match="CUDA is not available"):
        create_stt("kyutai").load_blocking()


def test_all_slots_busy_is_an_error(stt_folder):
    engine = _engine(stt_folder)
    try:
        engine.open_stream("a"), engine.open_stream("b")
        with pytest.raises(STTError, match="slots are busy"):
            engine.open_stream("c")
    finally:
        engine.close_blocking()


def test_models_can_be_given_directly(tokenizer):
    from moshi.models.lm import LMModel

    models = KyutaiModels(LMModel(**STT_LM), preset_mimi("tiny"), tokenizer, {"audio_delay_seconds": 0.5})
    engine = KyutaiSTT(KyutaiConfig(device="cpu", max_streams=1), models)
    try:
        _, results = asyncio.run(_run_sessions(engine, [np.zeros(24000, np.float32)]))
        assert all(t.audio_t <= 1.0 for t in results[0])
    finally:
        engine.close_blocking()
