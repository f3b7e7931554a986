"""Datasets into training records: text alignment, oracle events and cached Mimi codes, checked.

Mimi codes are computed once per record and Mimi, through ``FrameLoader``'s cache in the dataset's
``mimi-codes/`` folder (keyed by a fingerprint of Mimi's weights); ``kame data encode`` fills it ahead of
training, and training fills what is missing unless told not to (``encode_missing: false``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kame.data.dataset import CODES_FOLDER, SCHEMA, DatasetError, Record, read_records, shards
from kame.data.frames import FrameLoader, monologue_words, text_stream
from kame.errors import UserError
from kame.frames import FRAME_RATE

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("id", "sample_rate", "duration", "user_words", "assistant_words", "oracles")


class DataError(UserError, ValueError):
    """A dataset that cannot be trained on with this front-end; the message says what to fix."""


@dataclass
class TrainRecord:
    """One dialogue as the trainer needs it: streams that never change, events to augment."""

    id: str
    text: torch.Tensor  # [T] int32: the assistant's inner-monologue text
    assistant_codes: torch.Tensor  # [dep_q, T] int16 (compact: a whole dataset stays in memory)
    user_codes: torch.Tensor  # [n_q - dep_q, T] int16
    events: list[dict[str, Any]]  # the record's oracle events, in time order

    @property
    def frames(self) -> int:
        return int(self.text.shape[0])


def check_frontend(frontend: Any) -> None:
    """The front-end's tokenizer and Mimi must be the kind the datasets are aligned for."""
    lm, mimi = frontend.lm, frontend.mimi
    if frontend.tokenizer is None:
        raise DataError("the --init checkpoint has no text tokenizer; training needs one to align text")
    size = frontend.tokenizer.get_piece_size()
    if size != lm.text_card:
        raise DataError(
            f"the tokenizer has {size} pieces but the LM's text_card is {lm.text_card}: "
            "they come from different models"
        )
    if abs(float(mimi.frame_rate) - FRAME_RATE) > 1e-6:
        raise DataError(
            f"the checkpoint's Mimi runs at {mimi.frame_rate} Hz; kame datasets are aligned at "
            f"{FRAME_RATE} Hz (80 ms frames)"
        )
    own, other = lm.dep_q, lm.n_q - lm.dep_q
    if mimi.num_codebooks < max(own, other):
        raise DataError(
            f"the LM reads {own} + {other} codebooks but the checkpoint's Mimi gives {mimi.num_codebooks}"
        )


def load_records(
    folders: Sequence[str | Path],
    frontend: Any,
    *,
    encode_missing: bool = True,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[TrainRecord]:
    """Every record of the dataset folders, with its codes from the cache (filled if allowed)."""
    check_frontend(frontend)
    loader = FrameLoader(frontend)
    records: list[TrainRecord] = []
    for folder in folders:
        folder = Path(folder)
        loader.cache = folder / CODES_FOLDER
        metas = _read_metas(folder, limit)
        missing = [m["id"] for m in metas if not loader.cache_path(m["id"]).is_file()]
        if missing:
            _fill_cache(folder, loader, set(missing), encode_missing, progress)
        for meta in metas:
            records.append(_train_record(meta, loader, frontend))
        if limit is not None and len(records) >= limit:
            return records[:limit]
    return records


def _read_metas(folder: Path, limit: int | None) -> list[dict[str, Any]]:
    try:
        if not shards(folder):
            raise DataError(
                f"{folder}: not a kame dataset (no part*.tar shards); build one with `kame data build`"
            )
        metas = []
        for record in read_records(folder, audio=False):
            meta = record.meta
            absent = [k for k in REQUIRED_KEYS if k not in meta]
            if meta.get("schema") != SCHEMA or absent:
                raise DataError(
                    f"{folder}: record {meta.get('id', '?')!r} is not a {SCHEMA} record "
                    f"(schema {meta.get('schema')!r}{', missing ' + ', '.join(absent) if absent else ''}); "
                    "train on folders made by `kame data build`"
                )
            metas.append(meta)
    except DatasetError as exc:
        raise DataError(str(exc)) from exc
    if not metas:
        raise DataError(f"{folder}: the dataset holds no complete records")
    # by id, not in shard order: `kame data build`'s workers write records as they finish, so two builds
    # of the same source hold them in different orders, and the run's sample order (and a limited
    # evaluation set's choice of records) follows this list
    return sorted(metas, key=lambda meta: str(meta["id"]))[:limit]


def _fill_cache(
    folder: Path,
    loader: FrameLoader,
    missing: set[str],
    encode_missing: bool,
    progress: Callable[[str], None] | None,
) -> None:
    if not encode_missing:
        others = sorted({p.name.split(".")[1] for p in loader.cache.glob("*.npz")} - {loader.fingerprint()})  # type: ignore[union-attr]
        hint = (
            f" (the cache holds codes of another Mimi, fingerprint {', '.join(others)}; this checkpoint's is "
            f"{loader.fingerprint()})"
            if others
            else ""
        )
        raise DataError(
            f"{folder}: {len(missing)} record(s) have no cached Mimi codes for this checkpoint{hint} and "
            f"encoding is off; run `kame data encode {folder} --frontend SPEC` with the --init checkpoint, "
            "or set encode_missing: true"
        )
    if progress:
        progress(f"{folder}: encoding {len(missing)} record(s) with Mimi (cached for later runs)")
    encode_records(folder, loader, only=missing)


def encode_records(folder: str | Path, loader: FrameLoader, only: set[str] | None = None) -> tuple[int, int]:
    """Fill ``loader``'s cache for a dataset; returns (encoded, already cached)."""
    encoded = cached = 0
    try:
        for record in read_records(folder, audio=True):
            if only is not None and record.id not in only:
                continue
            if loader.cache_path(record.id).is_file():
                cached += 1
                continue
            loader.codes(record)
            encoded += 1
    except DatasetError as exc:
        raise DataError(str(exc)) from exc
    return encoded, cached


def _train_record(meta: dict[str, Any], loader: FrameLoader, frontend: Any) -> TrainRecord:
    lm = frontend.lm
    rid = str(meta["id"])
    frames = int(round(float(meta["duration"]) * FRAME_RATE))
    assistant, user = loader.codes(Record(meta, np.zeros(0, np.float32), np.zeros(0, np.float32)))
    if assistant.shape[-1] != frames or user.shape[-1] != frames:
        raise DataError(
            f"record {rid}: cached codes have {assistant.shape[-1]} frames for {frames} frames of audio; "
            f"delete {loader.cache_path(rid)} and encode again"
        )
    own, other = lm.dep_q, lm.n_q - lm.dep_q
    if assistant.shape[0] < own or user.shape[0] < other:
        raise DataError(f"record {rid}: cached codes have {assistant.shape[0]} codebooks, the LM reads {own}")
    assistant, user = assistant[:own].long(), user[:other].long()
    top = int(max(assistant.max(), user.max())) if frames else 0
    if top >= lm.card:
        raise DataError(
            f"record {rid}: its Mimi codes go up to {top} but the LM's codebooks have {lm.card} entries; "
            "the codes come from another codec than the LM's (check that the checkpoint's Mimi belongs to it)"
        )
    words = monologue_words(meta, "assistant")
    text = torch.tensor(text_stream(words, frames, loader.tokenizer), dtype=torch.int32)
    events = sorted(meta["oracles"], key=lambda e: float(e["time"]))
    compact = torch.int16 if lm.card <= torch.iinfo(torch.int16).max else torch.int32
    return TrainRecord(rid, text, assistant.to(compact), user.to(compact), events)
