"""The oracle stream's semantics, frame by frame, through the real batched generator."""

from __future__ import annotations

import random

import pytest
import torch

from kame.frontend.generator import OracleGenerator, SamplingConfig, SlotsFullError
from kame.frontend.oracle_track import OracleTrack, StreamingTextTokenizer

PAD, START = 3, 1000  # tiny checkpoint: pad token 3, start-of-oracle = text_card


def _user(card: int, seed: int) -> torch.Tensor:
    return torch.randint(0, card, (8,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def generator(tiny_frontend):
    with OracleGenerator(
        tiny_frontend.lm, tiny_frontend.tokenizer, max_sessions=3, sampling=SamplingConfig(greedy=True)
    ) as gen:
        yield gen


def _run(gen, slot, steps, fed, card=256, seed=0):
    for i in range(steps):
        (r,) = gen.step({slot: _user(card, seed + i)})
        fed.append(r.oracle)


def test_reset_append_pad_and_replace(generator, tiny_frontend):
    gen, sp = generator, tiny_frontend.tokenizer
    assert tiny_frontend.lm.oracle_start_token_id == START
    slot = gen.join()
    fed: list[int] = []
    _run(gen, slot, 3, fed)  # steps 0-2: nothing
    gen.oracle_reset(slot)  # start token at step 3
    gen.oracle_append_text(slot, "the capital of France")
    gen.oracle_end(slot)
    first = sp.encode("the capital of France")
    _run(gen, slot, 3 + len(first), fed)
    assert fed[0:3] == [PAD, PAD, PAD]  # pad at step 0 too, as the released streaming feeds
    assert fed[3] == START
    assert fed[4 : 4 + len(first)] == first
    assert fed[4 + len(first) :] == [PAD, PAD]  # then pad

    # A newer reset replaces the unfed tail of the current oracle.
    gen.oracle_reset(slot)
    gen.oracle_append_text(slot, "water boils at one hundred degrees")
    gen.oracle_end(slot)
    long = sp.encode("water boils at one hundred degrees")
    before = len(fed)
    _run(gen, slot, 3, fed, seed=50)  # start + 2 tokens fed
    gen.oracle_reset(slot)
    gen.oracle_append_text(slot, "yes")
    gen.oracle_end(slot)
    yes = sp.encode("yes")
    _run(gen, slot, 2 + len(yes), fed, seed=60)
    assert fed[before : before + 3] == [START, *long[:2]]
    assert fed[before + 3 : before + 4 + len(yes)] == [START, *yes]
    assert long[2] not in fed[before + 3 :]  # nothing of the replaced tail
    assert fed[-1] == PAD


def test_late_tokens_are_skipped_not_fed_late(generator, tiny_frontend):
    gen, sp = generator, tiny_frontend.tokenizer
    slot = gen.join()
    fed: list[int] = []
    _run(gen, slot, 2, fed)
    gen.oracle_reset(slot)  # start at step 2
    _run(gen, slot, 4, fed)  # steps 2..5: slots for tokens 1..3 pass empty
    tokens = sp.encode("the sun is a star")
    late = gen.oracle_append_ids(slot, tokens)
    assert late == 3 and gen.oracle_skipped(slot) == 3
    _run(gen, slot, len(tokens), fed, seed=9)
    assert fed[2] == START and fed[3:6] == [PAD, PAD, PAD]
    assert fed[6 : 6 + len(tokens) - 3] == tokens[3:]


def test_session_end_resets_everything(generator, tiny_frontend):
    gen = generator
    slot = gen.join()
    fed: list[int] = []
    _run(gen, slot, 2, fed)
    gen.oracle_reset(slot)
    gen.oracle_append_text(slot, "an unfinished answer that will never be fed because the session ends")
    gen.leave(slot)
    again = gen.join()
    assert again == slot and gen.step_of(slot) == 0
    fed2: list[int] = []
    _run(gen, again, 12, fed2)
    assert fed2 == [PAD] * 12  # the old oracle is not replayed
    assert gen.oracle_text(again) == ""


def test_sessions_join_and_leave_without_disturbing_others(tiny_frontend):
    def run_a(with_b: bool) -> list:
        torch.manual_seed(0)
        outs = []
        with OracleGenerator(
            tiny_frontend.lm, tiny_frontend.tokenizer, 3, SamplingConfig(greedy=True)
        ) as gen:
            a = gen.join()
            gen.oracle_reset(a)
            gen.oracle_append_text(a, "two plus two is four ")
            b = None
            for i in range(20):
                if with_b and i == 5:
                    b = gen.join()
                    gen.oracle_reset(b)
                    gen.oracle_append_text(b, "something else entirely ")
                if with_b and i == 14:
                    gen.leave(b)
                    b = None
                codes = {a: _user(256, i)}
                if b is not None and i % 3:  # b also stalls on some frames (exec mask)
                    codes[b] = _user(256, 100 + i)
                results = gen.step(codes)
                outs.append([(r.text, r.audio) for r in results if r.slot == a][0])
        return outs

    assert run_a(with_b=False) == run_a(with_b=True)


def test_slots_are_limited_and_checked(tiny_frontend):
    with OracleGenerator(tiny_frontend.lm, tiny_frontend.tokenizer, max_sessions=2) as gen:
        gen.join(), gen.join()
        with pytest.raises(SlotsFullError):
            gen.join()
        with pytest.raises(KeyError):
            gen.step({5: torch.zeros(8, dtype=torch.long)})


def test_greedy_runs_are_deterministic(tiny_frontend):
    def run() -> list:
        with OracleGenerator(
            tiny_frontend.lm, tiny_frontend.tokenizer, 1, SamplingConfig(greedy=True)
        ) as gen:
            s = gen.join()
            return [(r.text, r.audio) for i in range(10) for r in gen.step({s: _user(256, i)})]

    assert run() == run()


def test_track_semantics_without_a_model():
    track = OracleTrack(start_token=START, pad_token=PAD)
    assert track.token_at(5) == PAD
    track.reset(10)
    assert track.append([7, 8, 9], step=10) == 0
    assert [track.token_at(s) for s in range(9, 15)] == [PAD, START, 7, 8, 9, PAD]
    assert track.append([11, 12], step=15) == 1  # index 4 was step 14: passed
    assert track.token_at(15) == 12


@pytest.mark.parametrize("seed", range(5))
def test_streamed_text_tokenizes_like_the_whole_text(tiny_frontend, seed):
    sp = tiny_frontend.tokenizer
    text = "Barcelona is the capital of Catalonia, and Gaudi's church is 172.5 meters tall. Thanks!"
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), 12))
    chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    stream = StreamingTextTokenizer(sp)
    ids = [t for chunk in chunks for t in stream.feed(chunk)] + stream.flush()
    assert ids == sp.encode(text)
    naive = [t for chunk in chunks for t in sp.encode(chunk)]  # what the released server did
    assert naive != ids
