"""What the LM is fed, step by step, against references built from stock moshi and the released rules.

The references here are written from the specification, not from ``kame.frontend``:

- oracle tokens: the released positional rule (a reset puts the start token at the step it precedes,
  token k of that oracle goes at that step + 1 + k or is skipped if it arrives later, pad elsewhere),
  plus the one rule we add: a word held back because it was unfinished is released, tokenized as it
  stands, when its first token's slot comes due, and the rest of the word follows as continuation
  pieces;
- user codes: stock moshi streaming Mimi over the same 24 kHz audio, reset after frame 0, as Moshi's and
  the released KAME servers do;
- greedy generation: stock ``LMGen`` over a stock ``LMModel`` with the same weights, whose text input
  gets ``oracle_emb(token)`` added through moshi's own ``sum_condition`` argument.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import sentencepiece
import soundfile as sf
import torch
from moshi.models.lm import LMGen, LMModel

from kame.audio.io import load_audio
from kame.frontend.engine import FrontendEngine
from kame.frontend.generator import OracleGenerator, SamplingConfig
from kame.frontend.infer import run_inference
from kame.frontend.model import ORACLE_ZERO
from kame.frontend.oracle_script import parse_oracle_script

PAD, START = 3, 1000  # the tiny checkpoint: text pad id 3, start-of-oracle = text_card = 1000
WORD_START = "\u2581"


# -- the reference rule ---------------------------------------------------------------------------


def _pieces_without_marker(sp: sentencepiece.SentencePieceProcessor, text: str) -> list[int]:
    """SentencePiece pieces of ``text`` continuing a word: no word-start marker on the first piece."""
    pieces = sp.encode_as_pieces(text)
    pieces[0] = pieces[0].removeprefix(WORD_START)
    ids = []
    for piece in filter(None, pieces):
        if sp.piece_to_id(piece) != sp.unk_id():
            ids.append(sp.piece_to_id(piece))
        else:
            ids.extend(sp.piece_to_id(c) for c in piece)
    return ids


def reference_oracle_stream(
    sp: sentencepiece.SentencePieceProcessor,
    arrivals: dict[int, list[tuple[str, str]]],
    steps: int,
    complete_after: set[int] = frozenset(),
) -> list[int]:
    """Oracle token per step for ops ``arrivals[step] = [(kind, text), ...]`` applied before ``step``.

    ``complete_after``: steps after whose ops the current oracle's text is complete.
    """
    fed: list[int] = []
    slots: dict[int, int] = {}  # step -> token of the current oracle
    start = None
    count = 0  # tokens of the current oracle placed so far (start token included)
    text = ""  # current oracle's text
    done = 0  # characters of ``text`` already tokenized
    partial = False  # the word at ``done`` was already released partially

    def continue_word(released: str, more: str) -> list[int]:
        """The whole word's pieces past the released ones, or ``more``'s pieces without a word start."""
        whole, prev = sp.encode(released + more), sp.encode(released)
        return whole[len(prev) :] if whole[: len(prev)] == prev else _pieces_without_marker(sp, more)

    def place(ids: list[int], now: int) -> None:
        nonlocal count
        for token in ids:
            step = start + count
            if step >= now:  # a slot in the past is skipped
                slots[step] = token
            count += 1

    def tokenize(upto: int, now: int) -> None:
        """Tokenize text[done:upto] (a run of whole or released words) and place it."""
        nonlocal done, partial
        chunk = text[done:upto]
        if partial:
            head, _, rest = chunk.partition(" ")
            if head:
                place(continue_word(released, head), now)
            chunk = rest
        if chunk.strip():
            place(sp.encode(chunk), now)
        done = upto

    released = ""
    for now in range(steps):
        for kind, chunk in arrivals.get(now, []):
            if kind == "reset":
                start, count, slots, text, done, partial, released = now, 0, {}, "", 0, False, ""
                place([START], now)
            if kind in ("reset", "append"):
                text += chunk
                cut = text.rfind(" ")
                if cut >= done:
                    was_partial = partial
                    tokenize(cut, now)
                    done = cut + 1
                    if was_partial:
                        partial, released = False, ""
        if now in complete_after and start is not None and done < len(text):
            tokenize(len(text), now)
            partial, released = False, ""
        # the held word's slot is due: release it as it stands
        if start is not None and done < len(text) and start + count <= now:
            piece = text[done:]
            if partial:
                place(continue_word(released, piece), now)
                released += piece
            else:
                place(sp.encode(piece), now)
                released = piece
            partial, done = True, len(text)
        fed.append(slots.get(now, PAD))
    return fed


# -- our generator, driven the same way -----------------------------------------------------------


def _user(card: int, step: int) -> torch.Tensor:
    return torch.randint(0, card, (8,), generator=torch.Generator().manual_seed(100 + step))


def run_generator(frontend, arrivals, steps, complete_after=frozenset()) -> tuple[list[int], list]:
    with OracleGenerator(frontend.lm, frontend.tokenizer, 1, SamplingConfig(greedy=True)) as gen:
        slot = gen.join()
        fed, outs = [], []
        for now in range(steps):
            for kind, chunk in arrivals.get(now, []):
                gen.apply_oracle(slot, kind, chunk)
            if now in complete_after:
                gen.apply_oracle(slot, "end")
            (r,) = gen.step({slot: _user(frontend.lm.card, now)})
            fed.append(r.oracle)
            outs.append((r.text, r.audio))
    return fed, outs


def test_script_without_end_feeds_every_word_and_reset_at_time_zero(tiny_frontend):
    """A script's oracle is complete after its last operation; a reset at time 0 starts at step 0."""
    sp = tiny_frontend.tokenizer
    script = parse_oracle_script(
        [json.dumps({"time": 0.0, "op": "reset", "text": "The capital"}),
         json.dumps({"time": 0.05, "op": "append", "text": " of France is Paris"})]
    )  # fmt: skip
    audio = np.zeros(1920 * 30, dtype=np.float32)
    result = run_inference(tiny_frontend, audio, script, SamplingConfig(greedy=True))
    fed = [f["oracle"] for f in result.frames]
    expected = [START, *sp.encode("The capital of France is Paris")]
    assert fed[: len(expected)] == expected  # "Paris" is fed although no `end` came
    assert set(fed[len(expected) :]) == {PAD}
    arrivals = {0: [("reset", "The capital"), ("append", " of France is Paris")]}
    assert fed == reference_oracle_stream(sp, arrivals, 30, complete_after={0})


def test_a_reset_keeps_a_held_word_whose_slot_came_first(tiny_frontend):
    sp = tiny_frontend.tokenizer
    # "capital" is held (unfinished) after step 2's chunk; its slot is step 4; the new reset comes at 7.
    arrivals = {2: [("reset", "The capital")], 7: [("reset", "yes it is")]}
    fed, _ = run_generator(tiny_frontend, arrivals, 16, complete_after={7})
    capital = sp.encode("capital")
    assert fed[2:4] == [START, *sp.encode("The")]
    assert fed[4 : 4 + min(3, len(capital))] == capital[:3]  # released when due, before the reset
    assert fed[7 : 8 + len(sp.encode("yes it is"))] == [START, *sp.encode("yes it is")]
    assert fed == reference_oracle_stream(sp, arrivals, 16, complete_after={7})


def test_a_cancelled_stream_still_feeds_its_held_word(tiny_frontend):
    """The back-end cancels a stream mid-word: nothing more comes, the held piece is fed when due."""
    sp = tiny_frontend.tokenizer
    arrivals = {1: [("reset", "Water boils at one hund")]}
    fed, _ = run_generator(tiny_frontend, arrivals, 14)
    head = [START, *sp.encode("Water boils at one")]
    assert fed[1 : 1 + len(head)] == head
    assert fed[1 + len(head) : 1 + len(head) + len(sp.encode("hund"))] == sp.encode("hund")
    assert fed == reference_oracle_stream(sp, arrivals, 14)


def test_held_word_is_released_on_time_and_continues_without_a_word_start(tiny_frontend):
    sp = tiny_frontend.tokenizer
    released_at = 1 + len(sp.encode("I live in"))  # "Barce" is held until its slot comes
    continuation_slot = released_at + len(sp.encode("Barce"))
    arrivals = {0: [("reset", "I live in Barce")], continuation_slot: [("append", "lona now")]}
    fed, _ = run_generator(tiny_frontend, arrivals, 24, complete_after={continuation_slot})
    assert fed == reference_oracle_stream(sp, arrivals, 24, complete_after={continuation_slot})
    assert fed[released_at:continuation_slot] == sp.encode("Barce")  # released on time, as it stood
    tokens = [t for t in fed if t not in (PAD, START)]
    assert sp.decode(tokens) == "I live in Barcelona now"  # one word, not "Barce lona"
    assert not sp.id_to_piece(fed[continuation_slot]).startswith(WORD_START)

    # The rest of the word arriving after its slot: its first pieces are late and skipped, as released.
    late = {0: [("reset", "I live in Barce")], continuation_slot + 2: [("append", "lona now")]}
    fed, _ = run_generator(tiny_frontend, late, 24, complete_after={continuation_slot + 2})
    assert fed == reference_oracle_stream(sp, late, 24, complete_after={continuation_slot + 2})
    assert fed[continuation_slot : continuation_slot + 2] == [PAD, PAD]


def test_slow_bursty_stream_at_8_tokens_per_second(tiny_frontend):
    """An LLM streaming 8 tokens/s in bursts every 300 ms, pausing mid-word: frame by frame."""
    sp = tiny_frontend.tokenizer
    text = "The capital of France is Paris and the river Seine flows through the city of light"
    # Cut into chunks at fixed character offsets (mid-word cuts included), one burst every 300 ms
    # (about every 4 steps), each burst holding about 2.4 tokens' worth of characters.
    chunks = [text[i : i + 9] for i in range(0, len(text), 9)]
    arrivals: dict[int, list[tuple[str, str]]] = {}
    for index, chunk in enumerate(chunks):
        step = 3 + round(index * 0.3 * 12.5)
        arrivals.setdefault(step, []).append(("reset" if index == 0 else "append", chunk))
    last = max(arrivals)
    steps = last + 40
    fed, _ = run_generator(tiny_frontend, arrivals, steps, complete_after={last})
    reference = reference_oracle_stream(sp, arrivals, steps, complete_after={last})
    assert fed == reference
    assert any(t not in (PAD, START) for t in fed[last:])  # words still flow after the last burst


def test_greedy_generation_equals_stock_lmgen_plus_oracle_embedding(tiny_frontend):
    lm = tiny_frontend.lm
    sp = tiny_frontend.tokenizer
    arrivals = {0: [("reset", "The capital")], 4: [("append", " of France is Par")], 11: [("append", "is.")]}
    steps = 24
    fed, ours = run_generator(tiny_frontend, arrivals, steps, complete_after={11})
    assert fed == reference_oracle_stream(sp, arrivals, steps, complete_after={11})

    plain = LMModel(device="cpu", dtype=torch.float32, **tiny_frontend.lm_config).eval()
    plain.load_state_dict({k: v for k, v in lm.state_dict().items() if not k.startswith("oracle_emb.")})
    table = lm.state_dict()["oracle_emb.weight"]
    current = {"token": PAD}

    def forward_text(sequence, sum_condition=None, cross_attention_src=None):
        embedding = table[current["token"]].view(1, 1, -1).expand(sequence.shape[0], 1, -1)
        if sum_condition is not None:
            embedding = embedding + sum_condition
        return LMModel.forward_text(plain, sequence, embedding, cross_attention_src)

    plain.forward_text = forward_text  # moshi's own sum_condition path, fed the oracle embedding
    ref = LMGen(plain, use_sampling=False, support_out_of_sync=True)
    refs = []
    with ref.streaming(1), torch.no_grad():
        for step in range(steps):
            current["token"] = fed[step]
            out = ref.step(_user(lm.card, step).view(1, 8, 1))[0, :, 0].tolist()
            refs.append((out[0], out[1:]) if step >= 1 and min(out) >= 0 else (None, None))
    assert ours == refs


def test_oracle_off_is_stock_moshi_bit_for_bit(tiny_frontend):
    lm = tiny_frontend.lm
    plain = LMModel(device="cpu", dtype=torch.float32, **tiny_frontend.lm_config).eval()
    plain.load_state_dict({k: v for k, v in lm.state_dict().items() if not k.startswith("oracle_emb.")})
    ref = LMGen(plain, use_sampling=False, support_out_of_sync=True)
    greedy = SamplingConfig(greedy=True)
    with OracleGenerator(lm, tiny_frontend.tokenizer, 1, greedy, oracle_stream=False) as gen:
        slot = gen.join()
        with ref.streaming(1), torch.no_grad():
            for step in range(12):
                codes = _user(lm.card, step)
                (r,) = gen.step({slot: codes})
                out = ref.step(codes.view(1, 8, 1))
                assert r.oracle == ORACLE_ZERO
                if r.text is not None:
                    assert [r.text, *r.audio] == out[0, :, 0].tolist()
        with pytest.raises(RuntimeError, match="oracle stream off"):
            gen.apply_oracle(slot, "reset", "no oracles here")


# -- Mimi at session start ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    path = tmp_path_factory.mktemp("speech") / "q.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Which river flows through Paris?"], check=True)
    return load_audio(path)


def _stock_mimi_codes(mimi, audio: np.ndarray) -> list[list[int]]:
    """Moshi's server: encode frame by frame, resetting the streaming state after the first frame."""
    frames = -(-len(audio) // 1920)
    padded = np.zeros(frames * 1920, dtype=np.float32)
    padded[: len(audio)] = audio
    codes = []
    with mimi.streaming(1), torch.no_grad():
        for f in range(frames):
            chunk = torch.from_numpy(padded[f * 1920 : (f + 1) * 1920]).view(1, 1, -1)
            codes.append(mimi.encode(chunk)[0, :, 0].tolist())
            if f == 0:
                mimi.reset_streaming()
    return codes


def test_user_codes_equal_stock_streaming_mimi_reset_after_frame_0(tiny_frontend, speech):
    reference = _stock_mimi_codes(tiny_frontend.mimi, speech)
    result = run_inference(tiny_frontend, speech, [], SamplingConfig(greedy=True))
    assert [f["user"] for f in result.frames] == reference


def test_user_codes_of_a_session_joining_a_running_batch(tiny_frontend, speech):
    """The second session joins later, in another slot: its codes are still stock moshi's."""
    reference = _stock_mimi_codes(tiny_frontend.mimi, speech)
    noise = np.random.default_rng(0).normal(0, 0.1, 1920 * 40).astype(np.float32)
    with FrontendEngine(tiny_frontend, max_sessions=2, sampling=SamplingConfig(greedy=True)) as engine:
        first = engine.join()
        for f in range(5):
            engine.step({first: noise[f * 1920 : (f + 1) * 1920]})
        second = engine.join()
        padded = np.zeros(len(reference) * 1920, dtype=np.float32)
        padded[: len(speech)] = speech
        got = []
        for f in range(len(reference)):
            outputs = engine.step(
                {first: noise[(5 + f) % 40 * 1920 : ((5 + f) % 40 + 1) * 1920],
                 second: padded[f * 1920 : (f + 1) * 1920]}
            )  # fmt: skip
            got.append(next(o.result.user for o in outputs if o.result.slot == second))
    assert got == reference


def test_reply_wav_is_placed_on_the_input_clock(tiny_frontend, speech, tmp_path):
    """Step s's audio starts at 80 (s + 1) ms; checked against Mimi decoding the step's own codes."""
    result = run_inference(tiny_frontend, speech, [], SamplingConfig(greedy=True))
    assert len(result.audio) >= len(speech) and len(result.audio) % 1920 == 0
    mimi = tiny_frontend.mimi
    with mimi.streaming(1), torch.no_grad():
        for frame in result.frames:
            if frame["audio"] is None:
                continue
            pcm = mimi.decode(torch.tensor(frame["audio"]).view(1, 8, 1))[0, 0].numpy()
            at = (frame["frame"] + 1) * 1920
            assert np.allclose(result.audio[at : at + 1920], pcm, atol=1e-6)
    assert not result.audio[:3840].any()  # steps 0 and 1 start at 80 and 160 ms; step 0 is silent
    path = tmp_path / "reply.wav"
    sf.write(str(path), result.audio, 24000)
    assert sf.info(str(path)).duration >= len(speech) / 24000
