"""The oracle-conditioned LM against plain moshi, and training forward against streaming."""

from __future__ import annotations

import torch
from moshi.models.lm import LMGen, LMModel

from kame.frontend.generator import OracleLMGen
from kame.frontend.model import ORACLE_ZERO


def _plain_moshi(frontend) -> LMModel:
    """Stock moshi LMModel with the same weights (everything but the oracle embedding)."""
    plain = LMModel(device="cpu", dtype=torch.float32, **frontend.lm_config).eval()
    state = {k: v for k, v in frontend.lm.state_dict().items() if not k.startswith("oracle_emb.")}
    plain.load_state_dict(state)
    return plain


def _random_codes(lm, batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, lm.text_card, (batch, 1, frames), generator=g)
    audio = torch.randint(0, lm.card, (batch, lm.n_q, frames), generator=g)
    return torch.cat([text, audio], dim=1)


def test_zero_oracle_forward_equals_plain_moshi(tiny_frontend):
    lm = tiny_frontend.lm
    plain = _plain_moshi(tiny_frontend)
    codes = _random_codes(lm, batch=2, frames=20)
    zero = torch.full((2, 20), ORACLE_ZERO)
    with torch.no_grad():
        ours = lm(codes, oracle=zero)
        ours_none = lm(codes)
        ref = plain(codes)
    assert torch.equal(ours.text_logits, ref.text_logits)
    assert torch.equal(ours_none.text_logits, ref.text_logits)
    assert torch.equal(ours.logits.nan_to_num(), ref.logits.nan_to_num())


def test_oracle_changes_forward_only_after_it_is_fed(tiny_frontend):
    lm = tiny_frontend.lm
    codes = _random_codes(lm, batch=1, frames=12)
    oracle = torch.full((1, 12), lm.oracle_pad_token_id)
    changed = oracle.clone()
    changed[0, 5] = 42  # fed at position 6
    with torch.no_grad():
        a = lm(codes, oracle=oracle).text_logits[0, 0]
        b = lm(codes, oracle=changed).text_logits[0, 0]
    assert torch.equal(a[:6], b[:6])  # causal: positions before 6 cannot see it
    assert not torch.allclose(a[6], b[6])


def test_text_only_forward_gives_stock_text_logits_and_scores_no_audio(tiny_frontend):
    lm = tiny_frontend.lm
    plain = _plain_moshi(tiny_frontend)
    codes = _random_codes(lm, batch=2, frames=16, seed=5)
    with torch.no_grad():
        text_only = lm(codes, oracle=torch.full((2, 16), ORACLE_ZERO), text_only=True)
        ref = plain(codes)
        full_after = lm(codes)  # the flag does not outlive its call
    assert torch.equal(text_only.text_logits.nan_to_num(), ref.text_logits.nan_to_num())
    assert torch.equal(text_only.text_mask, ref.text_mask)
    assert text_only.logits.shape[:3] == ref.logits.shape[:3] and not text_only.mask.any()
    assert torch.equal(full_after.logits.nan_to_num(), ref.logits.nan_to_num())


def test_depformer_positions_score_stock_audio_logits_on_those_frames_only(tiny_frontend):
    lm = tiny_frontend.lm
    plain = _plain_moshi(tiny_frontend)
    codes = _random_codes(lm, batch=2, frames=16, seed=6)
    positions = torch.tensor([0, 3, 4, 9, 15])
    with torch.no_grad():
        part = lm(codes, oracle=torch.full((2, 16), ORACLE_ZERO), depformer_positions=positions)
        ref = plain(codes)
    assert torch.equal(part.text_logits.nan_to_num(), ref.text_logits.nan_to_num())
    assert part.mask.any() and not (part.mask & ~ref.mask).any()  # a subset of stock moshi's scored cells
    assert torch.equal(part.logits[part.mask], ref.logits[part.mask])
    # each codebook is scored on exactly the chosen frames, shifted by its delay as moshi undelays them
    delays = torch.tensor(lm.delays[lm.audio_offset : lm.audio_offset + lm.dep_q])
    for k in range(lm.dep_q):
        expected = torch.zeros(16, dtype=torch.bool)
        frames = positions - int(delays[k])
        expected[frames[(frames >= 0) & (frames < 16)]] = True
        assert torch.equal(part.mask[:, k], expected.expand(2, -1) & ref.mask[:, k])


def test_zero_oracle_streaming_equals_plain_moshi_lmgen(tiny_frontend):
    lm = tiny_frontend.lm
    plain = _plain_moshi(tiny_frontend)
    g = torch.Generator().manual_seed(3)
    user = torch.randint(0, lm.card, (12, 1, 8, 1), generator=g)
    ours = OracleLMGen(lm, use_sampling=False)
    ref = LMGen(plain, use_sampling=False, support_out_of_sync=True)
    outs, refs = [], []
    with ours.streaming(1), ref.streaming(1):
        for step in range(12):
            ours.set_oracle(torch.tensor([ORACLE_ZERO]))
            outs.append(ours.step(user[step]))
            refs.append(ref.step(user[step]))
    for a, b in zip(outs, refs, strict=True):
        assert torch.equal(a, b)


def test_teacher_forced_forward_equals_streaming(tiny_frontend):
    """Feed streaming and forward the same tokens; the text logits must agree at every position."""
    lm = tiny_frontend.lm
    steps = 16
    g = torch.Generator().manual_seed(7)
    user = torch.randint(0, lm.card, (steps, 8), generator=g)
    oracle_at_step = torch.full((steps,), lm.oracle_pad_token_id)
    # Step 0 gets pad, as the released streaming feeds it (and our forward at position 0).
    oracle_at_step[3] = lm.oracle_start_token_id
    oracle_at_step[4:9] = torch.randint(4, lm.text_card, (5,), generator=g)

    logits: list[torch.Tensor] = []
    texts: list[int] = []
    audios: list[torch.Tensor] = []
    gen = OracleLMGen(
        lm,
        use_sampling=False,
        on_text_logits_hook=lambda x: logits.append(x[0, 0, 0].clone()),
        on_text_hook=lambda t: texts.append(int(t[0])),
        on_audio_hook=lambda a: audios.append(a[0].clone()),
    )
    with gen.streaming(1):
        for step in range(steps):
            gen.set_oracle(oracle_at_step[step : step + 1])
            gen.step(user[step].view(1, 8, 1))

    # Forward frame f = what streaming consumed at step f + 1 (moshi's step 0 feeds initial tokens).
    frames = steps - 1
    delays = lm.delays
    codes = torch.zeros(1, lm.num_codebooks, frames, dtype=torch.long)
    codes[0, 0] = torch.tensor(texts[:frames])
    for k in range(lm.dep_q):  # the model's audio: codebook k sampled at step f + delay
        d = delays[1 + k]
        codes[0, 1 + k] = torch.stack([audios[f + d][k] for f in range(frames)])
    codes[0, 1 + lm.dep_q :] = user[1 : frames + 1].T
    oracle = oracle_at_step[1 : frames + 1].view(1, frames)
    with torch.no_grad():
        forward_logits = lm(codes, oracle=oracle).text_logits[0, 0]
    streamed = torch.stack(logits[:frames])
    assert torch.allclose(forward_logits, streamed, atol=1e-4), (forward_logits - streamed).abs().max()

    shifted = torch.roll(oracle, shifts=1, dims=1)  # an off-by-one must be caught
    with torch.no_grad():
        wrong = lm(codes, oracle=shifted).text_logits[0, 0]
    assert not torch.allclose(wrong, streamed, atol=1e-2)


def test_forward_rejects_misshaped_oracle(tiny_frontend):
    lm = tiny_frontend.lm
    codes = _random_codes(lm, batch=1, frames=5)
    try:
        lm(codes, oracle=torch.zeros(1, 4, dtype=torch.long))
    except ValueError as exc:
        assert "[B, T]" in str(exc)
    else:
        raise AssertionError("a misshaped oracle must be refused")
