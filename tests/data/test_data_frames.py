"""Frame streams for the trainer: inner-monologue text alignment, the oracle stream, Mimi codes."""

from __future__ import annotations

import numpy as np
import pytest

from kame.data.dataset import Record
from kame.data.frames import (
    END_OF_PAD,
    PAD,
    FrameLoader,
    monologue_words,
    num_frames,
    oracle_stream,
    text_stream,
)


class SplitTokenizer:
    """Tokens = character codes (one token per letter), enough to see where each piece lands."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text if not c.isspace()]


def test_text_stream_places_words_at_their_start_frame():
    words = [
        {"word": "ab", "start": 0.4, "end": 0.6},
        {"word": "c", "start": 0.45, "end": 0.7},
        {"word": "de", "start": 1.0, "end": 1.2},
    ]
    stream = text_stream(words, 20, SplitTokenizer())
    # "ab" at frame int(0.4*12.5)=5,6; "c" wants frame 5 but the first free frame is 7; "de" at 12,13
    assert stream[4] == END_OF_PAD and stream[5:8] == [ord("a"), ord("b"), ord("c")]
    assert stream[11] == END_OF_PAD and stream[12:14] == [ord("d"), ord("e")]
    assert all(stream[i] == PAD for i in [0, 1, 2, 3, 8, 9, 10, 14, 19])


def test_monologue_words_keep_the_written_punctuation():
    """The text stream spells words as written, as Moshi's monologue and the oracle's text do."""
    bare = ["Paris", "it's", "big"]
    timed = [{"word": w, "start": 0.1 * i, "end": 0.1 * i + 0.05} for i, w in enumerate(bare)]
    meta = {
        "assistant_words": timed,
        "turns": [
            {"speaker": "user", "text": "Where?", "words": [{"word": "Where", "start": 0.0, "end": 0.2}]},
            {"speaker": "assistant", "text": "Paris - it's big.", "words": timed},
        ],
    }
    words = monologue_words(meta, "assistant")
    assert [w["word"] for w in words] == ["Paris", "it's", "big."]  # "-" is not a word: no time of its own
    assert [w["start"] for w in words] == [w["start"] for w in timed]
    assert [w["word"] for w in monologue_words(meta, "user")] == ["Where?"]
    # times that do not line up with the text's words keep their bare words; no turns: the flat list
    meta["turns"][1]["text"] = "Paris is big."
    assert [w["word"] for w in monologue_words(meta, "assistant")] == ["Paris", "it's", "big"]
    assert monologue_words({"assistant_words": timed}, "assistant") == timed


def test_oracle_stream_start_tokens_and_overwrites():
    events = [{"frame": 2, "text": "abcdef"}, {"frame": 5, "text": "xy"}, {"frame": 14, "text": "zzz"}]
    stream = oracle_stream(events, 16, SplitTokenizer(), start_token=999)
    assert stream[:2] == [PAD, PAD]
    assert stream[2:5] == [999, ord("a"), ord("b")]  # cut off by the newer event at frame 5
    assert stream[5:8] == [999, ord("x"), ord("y")]
    assert stream[8:14] == [PAD] * 6  # the older oracle's tail is gone
    assert stream[14:] == [999, ord("z")]  # truncated at the end of the audio


def test_frame_loader_with_tiny_checkpoint(tiny_frontend, tmp_path):
    rate, seconds = 24000, 2.0
    n = int(rate * seconds)
    meta = {
        "id": "rec1",
        "sample_rate": rate,
        "user_words": [{"word": "hello", "start": 0.2, "end": 0.5}],
        "assistant_words": [{"word": "world", "start": 1.0, "end": 1.4}],
        "oracles": [{"frame": 7, "text": "world", "level": 5, "time": 0.6}],
    }
    rng = np.random.default_rng(0)
    record = Record(
        meta, rng.uniform(-0.3, 0.3, n).astype(np.float32), rng.uniform(-0.3, 0.3, n).astype(np.float32)
    )
    loader = FrameLoader(tiny_frontend, cache=tmp_path)
    streams = loader.frames(record)
    frames = num_frames(n)
    assert frames == 25 and streams.frames == frames
    assert streams.assistant_codes.shape == (tiny_frontend.mimi.num_codebooks, frames)
    assert streams.user_codes.shape == streams.assistant_codes.shape
    tokens = tiny_frontend.tokenizer.encode("world")
    assert streams.text[12 : 12 + len(tokens)].tolist() == tokens and streams.text[11] == END_OF_PAD
    assert (
        streams.oracle[7] == tiny_frontend.text_card
        and streams.oracle[8 : 8 + len(tokens)].tolist() == tokens
    )
    cached = list(tmp_path.glob("rec1.*.npz"))
    assert len(cached) == 1
    again = loader.frames(record)
    assert (again.assistant_codes == streams.assistant_codes).all()


def test_text_only_loader(tiny_frontend):
    loader = FrameLoader(tiny_frontend, codes=False)
    meta = {"id": "r", "sample_rate": 24000, "user_words": [], "assistant_words": [], "oracles": []}
    streams = loader.frames(Record(meta, np.zeros(1920 * 3, np.float32), np.zeros(1920 * 3, np.float32)))
    assert streams.assistant_codes is None and streams.text.tolist() == [PAD] * 3
    with pytest.raises(ValueError, match="codes=False"):
        loader.encode(np.zeros(1920, np.float32), 24000)
