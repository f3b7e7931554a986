"""The loss of a small real batch, recomputed by hand position by position from the logits."""

from __future__ import annotations

import math

import torch

from kame.train.collate import Augment, collate, make_sample, sample_rng
from kame.train.losses import LossWeights, compute_losses, word_starts


def _log_softmax_at(logits: torch.Tensor, index: int) -> float:
    values = [float(v) for v in logits]
    top = max(values)
    return values[index] - top - math.log(sum(math.exp(v - top) for v in values))


def test_loss_of_a_small_batch_by_hand(frontend, records):
    model = frontend.lm
    seq_len = 40
    chosen = [records[0], records[3]]
    samples = [
        make_sample(r, seq_len, frontend.tokenizer, model.text_card, Augment(), sample_rng(1, 0, r.id))
        for r in chosen
    ]
    samples.append(make_sample(records[1], seq_len, frontend.tokenizer, model.text_card, Augment(), None))
    codes, oracle = collate(samples)
    codes[2, :, 30:] = -1  # a record that ends early: the last 10 frames are padding
    oracle[2, 30:] = -1
    weights = LossWeights(text_pad_weight=0.5, semantic_weight=100.0, acoustic_weight=1.0, audio_weight=0.7)
    with torch.no_grad():
        output = model(codes, oracle=oracle)
        losses = compute_losses(output, codes, model.dep_q, weights)

    # text: every position whose target is not -1; only id 3 is pad (id 0, end of padding, is a token)
    pad, other = [], []
    for b in range(codes.shape[0]):
        for t in range(seq_len):
            target = int(codes[b, 0, t])
            if target == -1:
                continue
            ce = -_log_softmax_at(output.text_logits[b, 0, t], target)
            (pad if target == 3 else other).append(ce)
    assert pad and other and any(int(c) == 0 for c in codes[:, 0].flatten())
    text = sum(other) / len(other) + 0.5 * sum(pad) / len(pad)
    # audio: codebook k with delay d is predicted for frames t < T - d (moshi's delays: 0 then 1s)
    delays = model.delays[1 : 1 + model.dep_q]
    weighted, total = 0.0, 0.0
    for k, delay in enumerate(delays):
        w = 100.0 if k == 0 else 1.0
        for b in range(codes.shape[0]):
            for t in range(seq_len - delay):
                target = int(codes[b, 1 + k, t])
                if target == -1:
                    continue
                weighted += w * -_log_softmax_at(output.logits[b, k, t], target)
                total += w
            for t in range(seq_len - delay, seq_len):
                assert torch.isnan(output.logits[b, k, t]).all()  # masked: NaN, never weighted by zero
    audio = weighted / total
    assert math.isclose(float(losses.text_loss), text, rel_tol=1e-5)
    assert math.isclose(float(losses.audio_loss), audio, rel_tol=1e-5)
    assert math.isclose(float(losses.loss), text + 0.7 * audio, rel_tol=1e-5)


def test_word_start_weight_by_hand(frontend, records):
    """``text_word_weight``: a target that begins a word (its piece starts with U+2581, read here from
    the tokenizer's piece text) weighs that much within the non-pad mean; 1 is the plain loss."""
    model = frontend.lm
    sample = make_sample(records[0], 40, frontend.tokenizer, model.text_card, Augment(), None)
    codes, oracle = collate([sample])
    with torch.no_grad():
        output = model(codes, oracle=oracle)
    plain = compute_losses(output, codes, model.dep_q, LossWeights(text_pad_weight=0.5))
    weights = LossWeights(text_pad_weight=0.5, text_word_weight=4.0)
    starts = word_starts(frontend.tokenizer, model.text_card)
    weighted = compute_losses(output, codes, model.dep_q, weights, starts)
    pad, other, other_weight = [], 0.0, 0.0
    for t in range(codes.shape[-1]):
        target = int(codes[0, 0, t])
        ce = -_log_softmax_at(output.text_logits[0, 0, t], target)
        if target == 3:
            pad.append(ce)
            continue
        w = 4.0 if frontend.tokenizer.id_to_piece(target)[0] == "\u2581" else 1.0
        other += w * ce
        other_weight += w
    assert 0 < sum(int(s) for s in starts) < model.text_card
    assert any(frontend.tokenizer.id_to_piece(int(c))[0] == "\u2581" for c in codes[0, 0])
    expected = other / other_weight + 0.5 * sum(pad) / len(pad)
    assert math.isclose(float(weighted.text_loss), expected, rel_tol=1e-5)
    assert not math.isclose(float(weighted.text_loss), float(plain.text_loss), rel_tol=1e-4)
