"""Collation frame by frame on a real dataset: text alignment, Mimi codes, the oracle stream equal to
inference's (``OracleTrack`` replaying the events), augmentations within bounds, deterministic seeding."""

from __future__ import annotations

import pytest
import torch

from kame.data.dataset import read_records
from kame.data.frames import FrameLoader
from kame.frontend.oracle_track import OracleTrack
from kame.train.collate import ZERO, Augment, SampleOrder, make_sample, sample_rng

START = 1000  # the tiny tokenizer's text_card: the start-of-oracle token
PAD, END_OF_PAD = 3, 0


def _replayed(events, frames: int, tokenizer) -> list[int]:
    """What inference feeds at each step: every event is a reset at step int(t * 12.5) plus its tokens."""
    track = OracleTrack(start_token=START, pad_token=PAD)
    by_step = {}
    for event in events:
        by_step[int(float(event["time"]) * 12.5)] = event
    fed = []
    for step in range(frames):
        if step in by_step:
            track.reset(step)
            track.append(tokenizer.encode(by_step[step]["text"]), step)
        fed.append(track.token_at(step))
    return fed


def test_sample_frame_by_frame(dataset, frontend, records):
    tokenizer = frontend.tokenizer
    audio = {r.id: r for r in read_records(dataset)}
    fresh = FrameLoader(frontend)  # no cache: encodes the audio again
    for record in records:
        seq_len = record.frames + 7
        sample = make_sample(record, seq_len, tokenizer, START, Augment(), None)
        codes, n = sample.codes, record.frames
        assert sample.start == 0 and sample.frames == n and codes.shape == (17, seq_len)
        # text: each assistant word's tokens, as written in its turn (punctuation attached), from its
        # start frame (or the first free one), 0 just before
        meta = audio[record.id].meta
        text = codes[0, :n].tolist()
        written = [
            token
            for turn in meta["turns"]
            if turn["speaker"] == "assistant"
            for token in turn["text"].split()
            if any(ch.isalnum() for ch in token)
        ]
        assert len(written) == len(meta["assistant_words"])
        cursor = 0
        for word, spelt in zip(meta["assistant_words"], written, strict=True):
            assert word["word"] in spelt
            tokens = tokenizer.encode(spelt)
            first = max(int(word["start"] * 12.5), cursor)
            assert text[first : first + len(tokens)] == tokens, word
            if first > 0 and first - 1 >= cursor:
                assert text[first - 1] == END_OF_PAD
            cursor = first + len(tokens)
        assert sum(t not in (PAD, END_OF_PAD) for t in text) == sum(len(tokenizer.encode(w)) for w in written)
        # audio: the channels' Mimi codes, assistant first (the model's own 8), then the user's 8
        assistant = fresh.encode(audio[record.id].assistant, meta["sample_rate"])
        user = fresh.encode(audio[record.id].user, meta["sample_rate"])
        assert torch.equal(codes[1:9, :n], assistant[:8]) and torch.equal(codes[9:17, :n], user[:8])
        # oracle: frame by frame what inference's OracleTrack feeds for these events; pad at frame 0
        assert sample.oracle[:n].tolist() == _replayed(meta["oracles"], n, tokenizer)
        assert sample.oracle[0] == PAD
        # past the record's end: moshi's zero token everywhere (embeds to zero, masks the loss)
        assert (codes[:, n:] == ZERO).all() and (sample.oracle[n:] == ZERO).all()


def _event_frames(record) -> list[int]:
    return [int(float(e["time"]) * 12.5) for e in record.events]


def test_augmentations_stay_within_bounds_and_never_lead(frontend, records):
    tokenizer = frontend.tokenizer
    record = max(records, key=lambda r: len(r.events))
    assert len(record.events) >= 3
    plain = make_sample(record, record.frames, tokenizer, START, Augment(), None).oracle.tolist()
    shifts, kept = set(), []
    for seed in range(60):
        rng = sample_rng(seed, 0, record.id)
        sample = make_sample(record, record.frames, tokenizer, START, Augment(), rng)
        stream = sample.oracle.tolist()
        shifts.add(sample.shift)
        assert 3 <= sample.shift <= 13
        starts = [i for i, t in enumerate(stream) if t == START]
        frames = _event_frames(record)
        # the last event is always kept, and every oracle starts `shift` frames after its event time
        assert starts[-1] == frames[-1] + sample.shift or frames[-1] + sample.shift >= record.frames
        assert all(s - sample.shift in frames for s in starts)
        assert all(t == PAD for t in stream[: frames[0] + sample.shift])  # nothing before the first event
        kept.append(sample.kept_events)
        # the stream is the un-augmented one of the kept events, moved later: never earlier than t
        if sample.kept_events == len(record.events):
            assert stream[sample.shift :] == plain[: record.frames - sample.shift]
    assert len(shifts) > 5  # the lag really varies
    assert min(kept) < len(record.events) and max(kept) == len(record.events)  # dropping happens, not always


def test_lead_is_only_an_explicit_option(frontend, records):
    record = max(records, key=lambda r: len(r.events))
    augment = Augment(drop_events=None, oracle_lag=None, oracle_lead=(1, 15))
    for seed in range(20):
        sample = make_sample(
            record, record.frames, frontend.tokenizer, START, augment, sample_rng(seed, 0, "x")
        )
        assert -15 <= sample.shift <= -1
    assert Augment().oracle_lead is None


def test_crops_and_seeding_do_not_depend_on_batching(frontend, records):
    record = max(records, key=lambda r: r.frames)
    seq_len = record.frames // 2
    starts = set()
    for epoch in range(30):
        a = make_sample(
            record, seq_len, frontend.tokenizer, START, Augment(), sample_rng(7, epoch, record.id)
        )
        b = make_sample(
            record, seq_len, frontend.tokenizer, START, Augment(), sample_rng(7, epoch, record.id)
        )
        assert torch.equal(a.codes, b.codes) and torch.equal(a.oracle, b.oracle)
        assert 0 <= a.start <= record.frames - seq_len and a.frames == seq_len
        assert torch.equal(a.codes[0], record.text[a.start : a.start + seq_len].long())
        starts.add(a.start)
    assert len(starts) > 5
    order = SampleOrder([r.id for r in records], seed=3)
    for step in range(5):
        whole = order.batch(step, 4)
        halves = [order.batch(step, 4, rank, 2) for rank in (0, 1)]
        assert halves[0] + halves[1] == whole  # contiguous blocks: one process's micro-batches
    first_epoch = [order.at(i) for i in range(len(records))]
    assert sorted(index for _, index in first_epoch) == list(range(len(records)))  # each record once


def test_decoys_are_guesses_replaced_by_the_records_own_oracles(frontend, records):
    """``decoy_events``: wrong guesses before the record's first event, each replaced by a later oracle;
    from that event on the stream is the record's own (replayed by inference's OracleTrack)."""
    tokenizer = frontend.tokenizer
    record = min(records, key=lambda r: len(r.events))
    decoys = ("zebra quartz", "violet harbour")
    augment = Augment(drop_events=None, oracle_lag=None, decoy_events=(2, 2), decoys=decoys)
    own_first = min(int(e["frame"]) for e in record.events)
    own = _replayed(record.events, record.frames, tokenizer)
    encoded = {d: tokenizer.encode(d) for d in decoys}
    seen = set()
    for seed in range(20):
        sample = make_sample(record, record.frames, tokenizer, START, augment, sample_rng(seed, 0, record.id))
        stream = sample.oracle.tolist()
        assert sample.kept_events == len(record.events) + 2
        assert stream[own_first:] == own[own_first:]  # the record's oracles overwrite every decoy
        starts = [i for i in range(own_first) if stream[i] == START]
        assert 1 <= len(starts) <= 2 and all(own_first - 40 <= s for s in starts)
        for s in starts:  # each decoy's tokens follow its start token until the next oracle starts
            end = next((i for i in range(s + 1, record.frames) if stream[i] == START), record.frames)
            fed = stream[s + 1 : end]
            seen.add(next(d for d, tokens in encoded.items() if tokens[: len(fed)] == fed[: len(tokens)]))
    assert seen == set(decoys)
    assert Augment().decoy_events is None  # off unless asked for


def test_prefix_decoys_start_like_the_records_own_oracle_then_go_wrong(frontend, records):
    """``decoy_prefix``: a live back-end's early guesses share the final answer's first words, so such a
    decoy is the record's first 1-6 words (never all of them) followed by another oracle's words."""
    import random

    from kame.train.collate import augmented_oracle, near_miss

    own, other = "The answer to this question is two", "It is blue and nine and seven more"
    made = {near_miss(own, other, random.Random(seed)) for seed in range(200)}
    expected = {" ".join(own.split()[:k] + other.split()[k:]) for k in range(1, 7)}
    assert made == expected  # every cut from 1 to 6 words, each continued by the other's words
    assert near_miss("Paris", other, random.Random(0)) == other  # nothing to share but the whole answer
    assert near_miss(own, "Blue", random.Random(0)).split()[-1] == "Blue"

    tokenizer = frontend.tokenizer
    record = next(r for r in records if len(str(r.events[-1]["text"]).split()) >= 3)
    first_word = tokenizer.encode(str(record.events[-1]["text"]).split()[0])
    augment = Augment(
        drop_events=None, oracle_lag=None, decoy_events=(1, 1), decoys=(other,), decoy_prefix=1.0
    )
    own_first = min(int(e["frame"]) for e in record.events)
    checked = 0
    for seed in range(20):
        stream, _, kept = augmented_oracle(record, tokenizer, START, augment, sample_rng(seed, 0, record.id))
        start = stream.index(START)
        assert kept == len(record.events) + 1 and start < own_first
        if own_first - start > len(first_word):  # room for its first word before the record's own oracle
            assert stream[start + 1 : start + 1 + len(first_word)] == first_word  # the guess starts right
            checked += 1
    assert checked >= 10


def test_text_noise_changes_only_the_fed_back_words_never_the_targets(frontend, records):
    """``text_noise``: word tokens fed back to the model are replaced at random (pads, end-of-padding and
    the targets stay as they are), so it learns to find its place in the oracle after a wrong word."""
    from kame.train.collate import FIRST_WORD_TOKEN, collate, model_inputs

    record = max(records, key=lambda r: int((r.text >= FIRST_WORD_TOKEN).sum()))
    clean = make_sample(
        record, record.frames, frontend.tokenizer, START, Augment(), sample_rng(3, 0, record.id)
    )
    augment = Augment(text_noise=0.5)
    noisy = make_sample(
        record, record.frames, frontend.tokenizer, START, augment, sample_rng(3, 0, record.id)
    )
    assert torch.equal(noisy.codes, clean.codes) and torch.equal(noisy.oracle, clean.oracle)  # targets kept
    text, fed = noisy.codes[0], noisy.text_input
    words = text >= FIRST_WORD_TOKEN
    assert torch.equal(fed[~words], text[~words])  # pads, end-of-padding and padding frames untouched
    changed = int((fed[words] != text[words]).sum())
    assert 0.2 * int(words.sum()) <= changed <= 0.8 * int(words.sum())
    assert int(fed.max()) < START and int(fed[words].min()) >= FIRST_WORD_TOKEN
    codes, _ = collate([noisy, clean])
    inputs = model_inputs(codes, [noisy, clean])
    assert (
        torch.equal(inputs[0, 0], fed)
        and torch.equal(inputs[1], codes[1])
        and torch.equal(inputs[0, 1:], codes[0, 1:])
    )
    assert model_inputs(codes, [clean, clean]) is codes  # no noise: nothing copied
    assert (
        make_sample(record, record.frames, frontend.tokenizer, START, augment, None).text_input is None
    )  # eval


@pytest.mark.parametrize("lead", [(4, 8), (4, 12)])
def test_live_drafts_put_the_final_oracle_just_before_the_answer_after_earlier_guesses(
    frontend, records, lead
):
    """``live_drafts``: as a live back-end does, the record's last oracle arrives ``live_lead`` (by
    default 4-8) frames before the assistant's first word (never earlier than the data put it), after 0-3
    drafts 1-15 frames apart; from its frame on the stream is that oracle as inference replays it, and no
    lag is added."""
    from kame.train.collate import augmented_oracle, draft_text

    tokenizer = frontend.tokenizer
    others = ("zebra quartz", "violet harbour")
    # every earlier event dropped, so the starts are the drafts' and the final oracle's alone
    augment = Augment(
        drop_events=(1.0, 1.0), oracle_lag=(0, 6), decoys=others, live_drafts=1.0, live_lead=lead
    )
    counts = set()
    for record in records:
        last = record.events[-1]
        text = record.text.tolist()
        answer = next(f for f in range(int(last["frame"]), record.frames) if text[f] != PAD)
        for seed in range(10):
            stream, shift, kept = augmented_oracle(
                record, tokenizer, START, augment, sample_rng(seed, 0, record.id)
            )
            starts = [i for i, token in enumerate(stream) if token == START]
            final, drafts = starts[-1], starts[:-1]
            assert shift == 0 and kept == len(starts) and len(drafts) <= 3
            counts.add(len(drafts))
            if final > int(last["frame"]):
                assert lead[0] <= answer - final <= lead[1]
            else:
                assert final == int(last["frame"]) and answer - final <= lead[1]
            own = _replayed([{"time": (final + 0.5) / 12.5, "text": last["text"]}], record.frames, tokenizer)
            assert stream[final:] == own[final:]
            assert all(1 <= b - a <= 15 for a, b in zip(starts, starts[1:], strict=False))
    assert {0, 1, 2, 3} <= counts  # a lone final oracle too, as from a back-end that waits for the end
    own = "A spider has eight eyes one for each leg"
    made = [draft_text(own, others, sample_rng(seed, 0, "x")) for seed in range(300)]
    shorter = [d for d in made if own.startswith(d) and d != own]
    assert shorter and all(len(d.split()) < len(own.split()) for d in shorter)  # its own answer, cut short
    assert any(d in others for d in made)  # another answer
    assert any(d.split()[0] == "A" and d not in shorter for d in made)  # a guess that starts right
    assert Augment().live_drafts == 0.0  # off unless asked for


def test_live_lead_sets_how_early_the_final_oracle_lands():
    """The final oracle lands ``lead`` frames before the answer's first word, every lead in range."""
    from kame.train.collate import live_timeline

    text = [PAD] * 40 + [7] * 10  # the answer's first word at frame 40; the data's oracle at frame 10
    for lead in ((4, 8), (2, 12)):
        leads = set()
        for seed in range(200):
            events = live_timeline(
                [{"frame": 10, "text": "a b c"}], text, ("x y",), sample_rng(seed, 0, "r"), lead
            )
            leads.add(40 - events[-1]["frame"])
        assert leads == set(range(lead[0], lead[1] + 1))
    assert live_timeline([{"frame": 45, "text": "a"}], [PAD] * 50, (), sample_rng(0, 0, "r")) is None
