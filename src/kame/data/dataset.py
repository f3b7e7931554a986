"""The on-disk dataset: WebDataset-style tar shards, written append-only so an interrupted build loses
nothing it finished.

Layout of a dataset folder::

    build.json                    the settings it was built with (checked on resume)
    part{I}of{N}-{BLOCK:05d}.tar  shards: records whose local index (within shard I of N) // per_shard
                                  is BLOCK; order inside a shard is completion order
    failures.jsonl                one line per record that failed: id, index, stage, reason
    summary.json                  totals of the last build run
    mimi-codes/                   cached Mimi codes, ID.FINGERPRINT.npz (``kame data encode``, training)

Each record is three members sharing a key (the record id): ``ID.user.flac`` and ``ID.assistant.flac``
(24 kHz mono, 16-bit FLAC, equal lengths, a whole number of 80 ms frames) and ``ID.json`` last. The json
member is the commit mark: a record counts only when its json is complete, so a shard cut short by a
crash is repaired on resume by truncating it after its last complete record. The json holds (schema
``kame-dialogue/1``): ``id``, ``source``, ``question``, ``answer`` (the spoken ground-truth reply),
``written`` (the source's text), ``final``, ``sample_rate``, ``duration``, ``turns`` (speaker, text,
start, end, voice, rate, aligned_by, words [{word, start, end}]), ``user_words``, ``assistant_words``,
``oracles`` [{time, frame, level, ratio, heard, total, turn, text}], ``seed``, ``tts``, ``llm``.
Times are seconds from the start of the dialogue's audio.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from kame.errors import UserError

SCHEMA = "kame-dialogue/1"
CODES_FOLDER = "mimi-codes"  # the Mimi code cache inside a dataset folder
CHANNELS = ("user", "assistant")
SHARD_RE = re.compile(r"^part(\d+)of(\d+)-(\d{5})\.tar$")
BLOCK = 512  # tar block size


class DatasetError(UserError, ValueError):
    """A dataset folder or record that cannot be read; the message says what is wrong."""


@dataclass
class Record:
    """One dialogue: its metadata (the json member) and its two audio channels."""

    meta: dict[str, Any]
    user: np.ndarray
    assistant: np.ndarray

    @property
    def id(self) -> str:
        return str(self.meta["id"])

    @property
    def sample_rate(self) -> int:
        return int(self.meta["sample_rate"])


def shard_name(part: int, parts: int, block: int) -> str:
    return f"part{part}of{parts}-{block:05d}.tar"


def encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    return audio, rate


def _member(name: str, data: bytes, mtime: float) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o644
    return info, io.BytesIO(data)


def _complete_end(path: Path) -> tuple[int, list[str]]:
    """Byte offset just after the last complete record of a shard, and the ids of its complete records."""
    end, ids, pending = 0, [], set()
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                member_end = info.offset_data + -(-info.size // BLOCK) * BLOCK
                if member_end > path.stat().st_size:
                    break  # header written, data cut short
                key, _, kind = info.name.partition(".")
                if kind == "json":
                    try:
                        meta = json.loads(tar.extractfile(info).read())  # type: ignore[union-attr]
                    except (json.JSONDecodeError, tarfile.TarError, OSError):
                        break
                    if pending >= {f"{key}.{c}.flac" for c in CHANNELS} and meta.get("id") == key:
                        ids.append(key)
                        end = member_end
                    pending = set()
                else:
                    pending.add(info.name)
    except (tarfile.TarError, OSError, EOFError):
        pass  # whatever was read before the damage counts
    return end, ids


def _repair(path: Path, end: int) -> None:
    """Cut a shard after its last complete record and end it with tar's end-of-archive blocks."""
    if end == 0:
        path.unlink()
        return
    with path.open("r+b") as handle:
        handle.seek(end)
        tail = handle.read(2 * BLOCK)
        if len(tail) == 2 * BLOCK and not tail.strip(b"\0"):
            return  # intact: the end-of-archive marker follows the last record
        handle.truncate(end)  # drop a record cut short by a crash
        handle.seek(end)
        handle.write(b"\0" * 2 * BLOCK)
        handle.flush()
        os.fsync(handle.fileno())


class ShardWriter:
    """Appends records to the shards of one dataset folder; safe to reopen after a crash."""

    def __init__(self, folder: Path, part: int = 0, parts: int = 1, per_shard: int = 256) -> None:
        self.folder = folder
        self.part, self.parts, self.per_shard = part, parts, per_shard
        self.folder.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        for path in sorted(folder.glob(f"part{part}of{parts}-*.tar")):
            end, ids = _complete_end(path)
            _repair(path, end)
            self.done.update(ids)

    def write(self, index: int, meta: dict[str, Any], user: np.ndarray, assistant: np.ndarray) -> Path:
        """Append one record (``index`` is its position within this part) and make it durable."""
        key = str(meta["id"])
        if "." in key or "/" in key:
            raise DatasetError(f"record id {key!r} may not contain '.' or '/'")
        rate = int(meta["sample_rate"])
        path = self.folder / shard_name(self.part, self.parts, index // self.per_shard)
        now = time.time()
        members = [
            _member(f"{key}.user.flac", encode_flac(user, rate), now),
            _member(f"{key}.assistant.flac", encode_flac(assistant, rate), now),
            _member(f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"), now),
        ]
        with tarfile.open(path, "a:", format=tarfile.PAX_FORMAT) as tar:
            for info, data in members:
                tar.addfile(info, data)
            tar.fileobj.flush()  # type: ignore[union-attr]
            os.fsync(tar.fileobj.fileno())  # type: ignore[union-attr]
        self.done.add(key)
        return path


def shards(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such dataset folder")
    return sorted(p for p in folder.glob("*.tar") if SHARD_RE.match(p.name))


def read_shard(path: Path, *, audio: bool = True) -> Iterator[Record]:
    """The complete records of one shard, in stored order (a damaged tail is ignored)."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                key, _, kind = info.name.partition(".")
                if kind == "json":
                    try:
                        meta = json.loads(tar.extractfile(info).read())  # type: ignore[union-attr]
                    except (json.JSONDecodeError, tarfile.TarError, OSError):
                        return
                    channels = {}
                    for channel in CHANNELS:
                        data = members.pop(f"{key}.{channel}.flac", None)
                        if data is None:
                            break
                        channels[channel] = decode_flac(data)[0] if audio else np.zeros(0, np.float32)
                    else:
                        yield Record(meta, channels["user"], channels["assistant"])
                    members.clear()
                elif audio:
                    members[info.name] = tar.extractfile(info).read()  # type: ignore[union-attr]
                else:
                    members[info.name] = b""
    except (tarfile.TarError, OSError, EOFError):
        return


def read_records(folder: str | Path, *, audio: bool = True) -> Iterator[Record]:
    """Every complete record of a dataset folder, shard by shard (streams; one record in memory)."""
    for path in shards(folder):
        yield from read_shard(path, audio=audio)
