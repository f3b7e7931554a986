"""Samples and batches: random crops and Simulated Oracle Augmentation on top of the one oracle rule.

The oracle stream of a sample is ``kame.data.frames.oracle_stream`` of the events it keeps (inference's
own rule, replayed): frame-aligned with the codes, an event at time t starting at frame floor(t x 12.5).
That is what ``OracleLMModel.forward(codes, oracle=...)`` takes; it feeds frame f's token at position
f + 1, where the model has just heard frame f, as a live session does. Augmentations:

- **event dropping**: per sample, p ~ U(drop_events), and each event but the record's last one is
  dropped with probability p (the released trainer's rule);
- **back-end lag**: the whole stream is shifted *later* by k ~ U{oracle_lag} frames, as a live back-end
  delivers an oracle after the moment it describes (measured median 0.63 s, about 8 frames);
- **decoys** (opt-in, ``decoy_events``, off by default): k ~ U{decoy_events} wrong guesses (the last
  oracle of other records, drawn from ``decoys``) are inserted at random frames in the
  ``DECOY_WINDOW`` frames before the record's own first event, so that each is replaced by a later
  oracle, as a live back-end's early guesses are by its final answer. Data built with ``--oracles
  verbatim`` has one oracle per question; this teaches its model to drop a guess for the newer oracle.
  A share ``decoy_prefix`` of them start with the first 1-6 words of the record's own oracle and go on
  with the other record's words, as a live back-end's guesses from partial transcripts do ("The answer
  is 12." then "The answer to this question is 2."): the model must follow the newest oracle, not any
  earlier one that holds the word it has just said;
- **live drafts** (opt-in, ``live_drafts``): that share of samples gets a live back-end's timeline for
  the record's last oracle. A live session's final oracle arrives 4-8 frames before the assistant's
  first word (measured on ``bench/default_following.py``'s timelines), after 0-3 drafts each 1-15
  frames before the next: shorter versions of the same answer ("A spider has 8 eyes." then "A spider
  has 8 eyes, one for each leg."), guesses that start like it, other answers. The data's own timeline
  gives the oracle 3-21 frames ahead of the answer, before the lag, and no drafts. The final oracle
  moves to ``live_lead`` (default ``FINAL_LEAD``) frames before the answer's first word (never earlier
  than the data put it), drafts go before it, and the back-end lag is not added, since the placement
  already sets the lead;
- **text noise** (opt-in, ``text_noise``): that share of the assistant's word tokens *fed back* to the
  model is replaced by random tokens, the targets staying clean. Teacher forcing only ever shows a
  history that followed the oracle; live, the model samples its own words and one wrong piece must not
  lose its place in the oracle. With noise it learns to find the oracle's next word after an error;
- **lead** (opt-in, ``oracle_lead``, off by default): the released trainer also shifted the stream
  *earlier*, which shows the model oracle text before the words it was simulated from were heard.
  When both are set, each sample picks one direction at random, as the released trainer did.

Every random choice of a sample comes from a generator seeded by (seed, epoch, record id), so neither
the batch size nor the number of processes changes what a given sample sees.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kame.data.frames import PAD, oracle_stream
from kame.train.data import TrainRecord

ZERO = -1  # moshi's zero token: embeds to zero and masks the loss (frames past a record's end)
DECOY_WINDOW = 40  # frames (3.2 s) before a record's first oracle where its decoys may start
FINAL_LEAD = (4, 8)  # frames between a live-like final oracle and the assistant's first word
DRAFT_GAP = (1, 15)  # frames between a live-like draft and the next oracle
DRAFT_COUNT = (0, 3)  # none in a quarter: a back-end that answers only the final transcript


@dataclass(frozen=True)
class Augment:
    drop_events: tuple[float, float] | None = (0.1, 0.7)
    oracle_lag: tuple[int, int] | None = (3, 13)
    oracle_lead: tuple[int, int] | None = None
    decoy_events: tuple[int, int] | None = None
    decoys: tuple[str, ...] = ()  # texts to draw decoys from (other records' oracles)
    decoy_prefix: float = 0.0  # share of decoys that start like the record's own oracle
    text_noise: float = 0.0  # share of word tokens fed back as random tokens (targets unchanged)
    live_drafts: float = 0.0  # share of samples whose last oracle gets a live back-end's timeline
    live_lead: tuple[int, int] = FINAL_LEAD  # frames from that final oracle to the first answer word

    @classmethod
    def off(cls) -> Augment:
        return cls(None, None, None)


@dataclass
class Sample:
    record_id: str
    start: int  # first frame of the crop in the record
    frames: int  # real frames in the sample (the rest of seq_len is padding)
    codes: torch.Tensor  # [1 + n_q, seq_len]: text, the assistant's codebooks, the user's
    oracle: torch.Tensor  # [seq_len]
    shift: int  # frames the oracle stream was moved (positive: later)
    kept_events: int
    text_input: torch.Tensor | None = None  # [seq_len]: the text fed to the model, when it differs (noise)


def sample_rng(seed: int, epoch: int, record_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{epoch}:{record_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def shift_stream(stream: list[int], shift: int, pad: int = PAD) -> list[int]:
    """Move a stream later (``shift > 0``) or earlier, filling with pad."""
    if shift > 0:
        return [pad] * shift + stream[: len(stream) - shift]
    if shift < 0:
        return stream[-shift:] + [pad] * min(-shift, len(stream))
    return list(stream)


def near_miss(own: str, other: str, rng: random.Random, longest: int = 6) -> str:
    """A wrong guess that starts right: the first 1-``longest`` words of ``own`` (not all of them), then
    ``other``'s words from that point on (all of ``other`` when it is shorter)."""
    own_words, other_words = own.split(), other.split()
    if len(own_words) < 2:
        return other
    keep = rng.randint(1, min(longest, len(own_words) - 1))
    rest = other_words[keep:] or other_words
    return " ".join(own_words[:keep] + rest)


def first_word_frame(text: Any, start: int) -> int | None:
    """The first frame at or after ``start`` whose text token is not the pad (a word or its marker)."""
    for frame in range(max(0, start), len(text)):
        if int(text[frame]) != PAD:
            return frame
    return None


def draft_text(own: str, others: Sequence[str], rng: random.Random) -> str:
    """An earlier guess of a live back-end: its own answer cut short, a near miss, or another answer."""
    words = own.split()
    kind = rng.random()
    if kind < 0.4 and len(words) >= 2:
        return " ".join(words[: rng.randint(1, len(words) - 1)])
    if not others:
        return " ".join(words[:1])
    other = rng.choice(others)
    return near_miss(own, other, rng) if kind < 0.7 else other


def live_timeline(
    events: list[dict[str, Any]],
    text: Any,
    others: Sequence[str],
    rng: random.Random,
    lead: tuple[int, int] = FINAL_LEAD,
) -> list[dict[str, Any]] | None:
    """``events`` with the last one moved ``lead`` frames before its answer and drafts before it;
    ``None`` when the record has no answer after its last oracle."""
    last = events[-1]
    answer = first_word_frame(text, int(last["frame"]))
    if answer is None:
        return None
    frame = max(int(last["frame"]), answer - rng.randint(*lead))
    own = str(last["text"])
    drafts = []
    at = frame
    for _ in range(rng.randint(*DRAFT_COUNT)):
        at -= rng.randint(*DRAFT_GAP)
        if at < 0:
            break
        drafts.append({"frame": at, "text": draft_text(own, others, rng)})
    return events[:-1] + drafts[::-1] + [{**last, "frame": frame}]


def augmented_oracle(
    record: TrainRecord, tokenizer: Any, start_token: int, augment: Augment, rng: random.Random
) -> tuple[list[int], int, int]:
    """The record's oracle stream after dropping and shifting: (stream, shift, kept events)."""
    events = list(record.events)
    if augment.drop_events is not None and len(events) > 1:
        p = rng.uniform(*augment.drop_events)
        events = [e for e in events[:-1] if rng.random() >= p] + [events[-1]]
    live = None
    if augment.live_drafts > 0 and events and rng.random() < augment.live_drafts:
        live = live_timeline(events, record.text, augment.decoys, rng, augment.live_lead)
        events = live or events
    if augment.decoy_events is not None and augment.decoys and events:
        first = min(int(e["frame"]) for e in events)
        count = rng.randint(*augment.decoy_events)
        low = max(0, first - DECOY_WINDOW)
        frames = sorted(rng.randint(low, first - 1) for _ in range(count)) if first > 0 else []
        own = str(events[-1]["text"])
        decoys = []
        for frame in frames:
            text = rng.choice(augment.decoys)
            if rng.random() < augment.decoy_prefix:
                text = near_miss(own, text, rng)
            decoys.append({"frame": frame, "text": text})
        events = decoys + events
    stream = oracle_stream(events, record.frames, tokenizer, start_token)
    if live is not None:
        return stream, 0, len(events)
    shifts = []
    if augment.oracle_lag is not None:
        shifts.append(rng.randint(*augment.oracle_lag))
    if augment.oracle_lead is not None:
        shifts.append(-rng.randint(*augment.oracle_lead))
    shift = rng.choice(shifts) if shifts else 0
    return shift_stream(stream, shift), shift, len(events)


def make_sample(
    record: TrainRecord,
    seq_len: int,
    tokenizer: Any,
    start_token: int,
    augment: Augment,
    rng: random.Random | None,
) -> Sample:
    """One training sample: a random crop of ``seq_len`` frames, augmented.

    ``rng=None`` gives the evaluation sample: the first ``seq_len`` frames, unaugmented.
    """
    if rng is None:
        oracle, shift, kept = augmented_oracle(
            record, tokenizer, start_token, Augment.off(), random.Random(0)
        )
        start = 0
    else:
        oracle, shift, kept = augmented_oracle(record, tokenizer, start_token, augment, rng)
        start = rng.randint(0, record.frames - seq_len) if record.frames > seq_len else 0
    end = min(start + seq_len, record.frames)
    count = end - start
    own, other = record.assistant_codes.shape[0], record.user_codes.shape[0]
    codes = torch.full((1 + own + other, seq_len), ZERO, dtype=torch.long)
    codes[0, :count] = record.text[start:end]
    codes[1 : 1 + own, :count] = record.assistant_codes[:, start:end]
    codes[1 + own :, :count] = record.user_codes[:, start:end]
    stream = torch.full((seq_len,), ZERO, dtype=torch.long)
    stream[:count] = torch.tensor(oracle[start:end], dtype=torch.long)
    text_input = None
    if rng is not None and augment.text_noise > 0:
        text_input = noisy_text(codes[0], augment.text_noise, start_token, rng)
    return Sample(record.id, start, count, codes, stream, shift, kept, text_input)


FIRST_WORD_TOKEN = PAD + 1  # the tokens below (end-of-padding 0, 1, 2 and the pad) are never replaced


def noisy_text(text: torch.Tensor, share: float, text_card: int, rng: random.Random) -> torch.Tensor:
    """``text`` with each word token replaced, with probability ``share``, by a random word token."""
    noisy = text.clone()
    for position in range(len(noisy)):
        if int(noisy[position]) >= FIRST_WORD_TOKEN and rng.random() < share:
            noisy[position] = rng.randrange(FIRST_WORD_TOKEN, text_card)
    return noisy


def collate(samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples into ``codes [B, 1 + n_q, T]`` and ``oracle [B, T]``."""
    return torch.stack([s.codes for s in samples]), torch.stack([s.oracle for s in samples])


def model_inputs(codes: torch.Tensor, samples: Sequence[Sample]) -> torch.Tensor:
    """The codes fed to the model: ``codes`` (the targets) with each sample's noisy text, if any."""
    if all(s.text_input is None for s in samples):
        return codes
    inputs = codes.clone()
    for row, sample in enumerate(samples):
        if sample.text_input is not None:
            inputs[row, 0] = sample.text_input.to(codes.device)
    return inputs


class SampleOrder:
    """Which record the i-th sample of a run comes from: a fresh permutation every epoch.

    Sample ``i`` belongs to epoch ``i // len(records)``; the global batch of step ``s`` is samples
    ``[s * B, (s + 1) * B)``, and process ``rank`` of ``world_size`` takes the ``rank``-th contiguous
    block of ``B / world_size`` of them (so its micro-batches are the ones a single process would make).
    """

    def __init__(self, record_ids: Sequence[str], seed: int) -> None:
        self.ids = list(record_ids)
        self.seed = seed
        self._orders: dict[int, list[int]] = {}

    def order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            indices = list(range(len(self.ids)))
            random.Random(f"order:{self.seed}:{epoch}").shuffle(indices)
            self._orders = {epoch: indices}
        return self._orders[epoch]

    def at(self, index: int) -> tuple[int, int]:
        """(epoch, record index) of sample ``index``."""
        epoch, position = divmod(index, len(self.ids))
        return epoch, self.order(epoch)[position]

    def batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
        share = batch_size // world_size
        first = step * batch_size + rank * share
        return [self.at(first + j) for j in range(share)]
