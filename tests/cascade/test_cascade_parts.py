"""The cascade's parts on their own: speakable chunks, the frame-paced player, the turn detector, config."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from kame.audio.io import resample
from kame.audio.tts import spoken_words
from kame.backend.stt.base import Transcript, Word
from kame.frames import FRAME_SIZE, SAMPLE_RATE
from kame.runtime.cascade.chunks import ChunkerConfig, SpeakableChunker
from kame.runtime.cascade.pipeline import CascadeConfig, CascadeConfigError
from kame.runtime.cascade.player import ReplyPlayer
from kame.runtime.cascade.turns import TurnDetector


def _stream(text: str, chunker: SpeakableChunker, step: int = 3) -> list[str]:
    """Feed ``text`` a few characters at a time, as tokens arrive, then flush."""
    out = []
    for i in range(0, len(text), step):
        out.extend(chunker.feed(text[i : i + step]))
    return out + chunker.flush()


def test_chunks_are_sentences_or_long_enough_clauses():
    text = "Sure, I'd be happy to help with that. The capital of France is Paris, a city of about two million"
    chunks = _stream(text, SpeakableChunker())
    assert chunks == [
        "Sure, I'd be happy to help with that.",  # "Sure," is a first clause too short to say alone
        "The capital of France is Paris, a city of about two million",  # 6 words < 8: no clause cut
    ]
    assert " ".join(chunks).split() == text.split()  # nothing lost, nothing added


def test_first_clause_cuts_early_and_numbers_stay_whole():
    text = "Yes, well, honestly, I think it costs 3.50 euros, or maybe a little less than that in the end."
    chunks = _stream(text, SpeakableChunker(ChunkerConfig(first_clause_words=3, clause_words=8)), step=1)
    assert chunks == [
        "Yes, well, honestly,",  # the first clause of 3 words goes to the TTS at once
        "I think it costs 3.50 euros, or maybe a little less than that in the end.",
    ]


def test_unspeakable_symbols_are_dropped_and_long_runs_are_cut():
    chunker = SpeakableChunker(ChunkerConfig(max_words=5))
    chunks = _stream("**Paris** is `the` capital and largest city of France", chunker)
    assert chunks[0] == "Paris is the capital and"
    assert all(not set(c) & set("*`#") for c in chunks)
    assert SpeakableChunker().feed("*** ---") == [] and SpeakableChunker().flush() == []


def test_chunker_rejects_bad_counts():
    with pytest.raises(ValueError, match=">= 1"):
        ChunkerConfig(max_words=0)


def test_player_hands_out_frames_and_words_when_their_audio_plays(piper):
    speech = piper.synthesize("Hello there, my friend.")
    audio = resample(speech.audio, speech.sample_rate, SAMPLE_RATE)
    player = ReplyPlayer()
    player.enqueue(audio, speech.words)
    frames = []
    while player.has_audio:
        frames.append(player.next_frame())
    assert len(frames) == -(-len(audio) // FRAME_SIZE)
    assert all(len(f.pcm) == FRAME_SIZE for f in frames)
    np.testing.assert_array_equal(np.concatenate([f.pcm for f in frames])[: len(audio)], audio)
    heard = [(index, word) for index, f in enumerate(frames) for word in f.words]
    assert [w for _, w in heard] == spoken_words("Hello there, my friend.")
    for (index, _), timing in zip(heard, speech.words, strict=True):
        assert index == int(round(timing.start * SAMPLE_RATE)) // FRAME_SIZE  # the frame its start is in
    assert not player.next_frame().audio  # silence once drained


def test_player_stop_drops_the_rest_at_once(piper):
    speech = piper.synthesize("This sentence will be cut off before it ends.")
    audio = resample(speech.audio, speech.sample_rate, SAMPLE_RATE)
    player = ReplyPlayer()
    player.enqueue(audio, speech.words)
    played = [player.next_frame() for _ in range(5)]
    assert all(f.audio for f in played)
    dropped = player.stop()
    assert dropped == len(audio) - 5 * FRAME_SIZE and player.played_samples == 5 * FRAME_SIZE
    after = player.next_frame()
    assert not after.audio and not after.words and not after.pcm.any()


def _transcript(kind: str, text: str, utterance: int) -> Transcript:
    words = tuple(Word(w, i * 0.3, i * 0.3 + 0.2) for i, w in enumerate(text.split()))
    return Transcript(kind, text, words, utterance, audio_t=2.0)  # type: ignore[arg-type]


def test_turns_end_on_finals_and_barge_in_needs_a_word():
    turns = TurnDetector(min_words=1)
    assert turns.on_transcript(_transcript("partial", "what is", 0), replying=False) == []
    [end] = turns.on_transcript(_transcript("final", "what is it", 0), replying=False)
    assert end.kind == "turn_end"
    assert turns.on_transcript(_transcript("partial", "", 1), replying=True) == []  # VAD alone: noise
    [barge] = turns.on_transcript(_transcript("partial", "wait", 1), replying=True)
    assert barge.kind == "barge_in"
    assert turns.on_transcript(_transcript("partial", "wait a", 1), replying=True) == []  # once per utterance
    kinds = [d.kind for d in turns.on_transcript(_transcript("final", "yes", 2), replying=True)]
    assert kinds == ["barge_in", "turn_end"]  # a one-word utterance whose only transcript is its final
    assert turns.on_transcript(_transcript("final", "", 3), replying=False) == []


def test_bad_settings_say_what_to_fix(tmp_path):
    from kame.cli.serve import pipelines_from_arg

    with pytest.raises(CascadeConfigError, match="--turn-silence"):
        CascadeConfig(turn_silence_s=0.0)
    with pytest.raises(ValueError, match="barge-in"):
        TurnDetector(min_words=0)
    assert pipelines_from_arg("cascade,kame") == ("cascade", "kame")
    for bad in ("moshi", "kame,kame", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="kame, cascade"):
            pipelines_from_arg(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CascadeConfig(system_prompt_file=str(tmp_path / "missing.txt")).load_system_prompt()
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Answer like a pirate.\n")
    assert CascadeConfig(system_prompt_file=str(prompt)).load_system_prompt() == "Answer like a pirate."
    assert "spoken" in CascadeConfig().load_system_prompt()
