"""Turn a dataset record into the aligned per-frame streams the trainer consumes.

All streams share one index: frame f covers audio [f * 80 ms, (f + 1) * 80 ms) of the dialogue.

- ``text``: the assistant's inner monologue, words as written (``monologue_words``: "France?" keeps its
  "?", as Moshi's inner monologue and the LLM's oracle text both do). A word's tokens start at the
  word's start frame (the first free frame at or after it) and follow one per frame; the frame before a
  word, if it would be padding, carries the end-of-padding token (0); every other frame is padding (3).
- ``user_text``: the same for the user's words (for models that also predict the other side).
- ``oracle``: the oracle stream, built by inference's own rule (``render_oracle_stream``). Each event at
  frame f writes the start-of-oracle token (``text_card``) there, then its text's tokens one per frame,
  and clears what an older event left after f; frames with no oracle token are padding (3).
  Augmentations (dropping events, the back-end's lag) belong to the trainer: ``kame.train.collate``.
- ``assistant_codes`` / ``user_codes``: Mimi codes [K, T] of the two channels, computed with the
  front-end's Mimi, optionally cached on disk (keyed by record id and a fingerprint of Mimi's weights).
  Each channel is encoded whole, as both released trainers do; live sessions instead reset Mimi's
  streaming state after their first frame (``FrontendEngine``), so the codes of the first frame or two
  can differ slightly between the two.

Training and streaming must agree on which token goes with which model step; this module speaks in
frames only, and the trainer maps frames to steps exactly as the front-end's generator does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from kame.audio.tts.words import text_words
from kame.data.dataset import Record, read_records
from kame.frames import FRAME_RATE, SAMPLE_RATE
from kame.frontend.oracle_track import render_oracle_stream

PAD = 3  # moshi's existing_text_padding_id
END_OF_PAD = 0


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


def num_frames(samples: int, sample_rate: int = SAMPLE_RATE, frame_rate: float = FRAME_RATE) -> int:
    per_frame = int(round(sample_rate / frame_rate))
    return -(-samples // per_frame)


def text_stream(
    words: Sequence[dict[str, Any]],
    frames: int,
    tokenizer: Tokenizer,
    *,
    frame_rate: float = FRAME_RATE,
    pad: int = PAD,
    end_of_pad: int = END_OF_PAD,
) -> list[int]:
    """Inner-monologue alignment of timed words ({word, start, end}) into ``frames`` text tokens."""
    stream = [pad] * frames
    cursor = 0  # first free frame
    for word in sorted(words, key=lambda w: w["start"]):
        tokens = list(tokenizer.encode(str(word["word"])))
        first = max(int(float(word["start"]) * frame_rate), cursor)
        if not tokens or first >= frames:
            continue
        if first > 0 and stream[first - 1] == pad:
            stream[first - 1] = end_of_pad
        for k, token in enumerate(tokens[: frames - first]):
            stream[first + k] = token
        cursor = first + len(tokens)
    return stream


def monologue_words(meta: dict[str, Any], speaker: str) -> list[dict[str, Any]]:
    """A record's timed words of one speaker in their written form, punctuation attached.

    TTS word times name bare words ("France"); the text stream spells the written token ("France?"),
    so it is tokenized as the oracle's text is (the same pieces, the same punctuation) and a word can be
    copied from the oracle piece for piece. A turn whose times do not line up with its text's words
    (an old record, a hand-made one) keeps its bare words.
    """
    words: list[dict[str, Any]] = []
    turns = [t for t in meta.get("turns") or [] if t.get("speaker") == speaker]
    if not turns:
        return list(meta[f"{speaker}_words"])
    for turn in turns:
        timed = list(turn.get("words") or [])
        written = text_words(str(turn.get("text", "")))
        lined_up = len(written) == len(timed) and all(
            w.word == str(t["word"]) for w, t in zip(written, timed, strict=True)
        )
        if not lined_up:
            words.extend(timed)
            continue
        words.extend({**t, "word": w.written} for w, t in zip(written, timed, strict=True))
    return words


def oracle_stream(
    events: Sequence[dict[str, Any]],
    frames: int,
    tokenizer: Tokenizer,
    start_token: int,
    *,
    pad: int = PAD,
) -> list[int]:
    """The per-frame oracle tokens of a record's events ({frame, text}), later events overwriting.

    The stream is built by the inference rule itself (``render_oracle_stream``), frame-aligned with the
    Mimi codes; ``OracleLMModel.forward`` feeds frame ``f``'s token at position ``f + 1``, where the model
    has just heard frame ``f``, as a live session feeds an event of input frame ``f`` at step ``f``.
    """
    ordered = sorted(events, key=lambda e: int(e["frame"]))
    timed = [(int(event["frame"]), str(event["text"])) for event in ordered]
    return render_oracle_stream(timed, frames, tokenizer, start_token, pad)


@dataclass
class FrameStreams:
    record_id: str
    text: torch.Tensor  # [T] long
    user_text: torch.Tensor  # [T] long
    oracle: torch.Tensor  # [T] long
    assistant_codes: torch.Tensor | None = None  # [K, T] long
    user_codes: torch.Tensor | None = None  # [K, T] long
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return int(self.text.shape[0])


class FrameLoader:
    """Makes ``FrameStreams`` from records with a front-end's tokenizer and Mimi.

    ``frontend`` is a ``kame.frontend.checkpoint.Frontend`` (``load_frontend(DIR)``); pass
    ``codes=False`` for text and oracle streams only, ``cache`` for a folder of cached Mimi codes.
    """

    def __init__(self, frontend: Any, *, codes: bool = True, cache: str | Path | None = None) -> None:
        if frontend.tokenizer is None:
            raise ValueError("the front-end has no text tokenizer; load a checkpoint that includes one")
        self.tokenizer = frontend.tokenizer
        self.start_token = int(frontend.text_card)
        self.mimi = frontend.mimi if codes else None
        self.cache = Path(cache) if cache else None
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """Changes when Mimi's weights change (so stale cached codes are never used)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.mimi.state_dict().items()):  # type: ignore[union-attr]
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def encode(self, audio: np.ndarray, sample_rate: int) -> torch.Tensor:
        mimi = self.mimi
        if mimi is None:
            raise ValueError("this loader was made with codes=False")
        if sample_rate != mimi.sample_rate:
            from kame.audio.io import resample

            audio = resample(audio, sample_rate, int(mimi.sample_rate))
        device = next(mimi.parameters()).device
        with torch.no_grad():
            wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(device)[None, None]
            return mimi.encode(wav)[0].long().cpu()

    def cache_path(self, record_id: str) -> Path:
        if self.cache is None:
            raise ValueError("this loader has no cache folder")
        return self.cache / f"{record_id}.{self.fingerprint()}.npz"

    def codes(self, record: Record) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.cache_path(record.id) if self.cache else None
        if path is not None and path.is_file():
            with np.load(path) as stored:
                return torch.from_numpy(stored["assistant"]), torch.from_numpy(stored["user"])
        assistant = self.encode(record.assistant, record.sample_rate)
        user = self.encode(record.user, record.sample_rate)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # per process: two runs filling one cache (two trainings on one dataset) must not collide
            temporary = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(temporary, assistant=assistant.numpy(), user=user.numpy())
            temporary.replace(path)
        return assistant, user

    def frames(self, record: Record) -> FrameStreams:
        meta = record.meta
        count = num_frames(len(record.user), record.sample_rate)
        text = text_stream(monologue_words(meta, "assistant"), count, self.tokenizer)
        user_text = text_stream(monologue_words(meta, "user"), count, self.tokenizer)
        oracle = oracle_stream(meta["oracles"], count, self.tokenizer, self.start_token)
        assistant_codes = user_codes = None
        if self.mimi is not None:
            assistant_codes, user_codes = self.codes(record)
            if assistant_codes.shape[-1] != count:
                raise ValueError(
                    f"record {record.id}: Mimi gave {assistant_codes.shape[-1]} frames for {count} frames of "
                    "audio; is the front-end's Mimi at 12.5 Hz and 24 kHz?"
                )
        return FrameStreams(
            record.id,
            torch.tensor(text, dtype=torch.long),
            torch.tensor(user_text, dtype=torch.long),
            torch.tensor(oracle, dtype=torch.long),
            assistant_codes,
            user_codes,
            meta,
        )

    def iterate(self, folder: str | Path) -> Iterator[FrameStreams]:
        """Frame streams of every record of a dataset folder, streamed shard by shard."""
        for record in read_records(folder):
            yield self.frames(record)
