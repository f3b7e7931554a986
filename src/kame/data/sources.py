"""Where dialogues come from: question/answer or multi-turn records from local files or the Hugging Face hub.

A source is named by a spec string:

- ``jsonl:PATH`` / ``parquet:PATH`` (a file or a folder of them): columns ``question`` and ``answer`` by
  default, or ``turns`` (a list of ``{"role", "content"}`` messages) for multi-turn dialogues;
- ``hf:OWNER/NAME[:CONFIG][@SPLIT]``: any Hugging Face dataset, read with ``datasets`` (streaming);
- presets with their columns already mapped: ``gsm8k`` (openai/gsm8k, main, train), ``mmlu-pro``
  (TIGER-Lab/MMLU-Pro, test), ``hssbench:OWNER/NAME[:CONFIG][@SPLIT]`` (a multiple-choice mapping; the
  hub id must be given).

Other column names are mapped with ``ColumnMap`` (``question=problem,answer=solution,options=choices``);
``question_audio``/``answer_audio`` columns name recordings to use instead of synthesis (their word times
then come from Whisper alignment).
Every record keeps its ground truth: ``answer`` is the reply the dialogue's assistant must give.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kame.errors import UserError
from kame.jsonl import json_objects

LETTERS = "ABCDEFGHIJKLMNOP"


class SourceError(UserError, ValueError):
    """A source spec, file or column mapping that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Turn:
    speaker: str  # "user" | "assistant"
    text: str


@dataclass
class SourceRecord:
    """One dialogue as written: alternating turns starting with the user; ``final`` is a short ground truth
    (a number, an option) the spoken reply must keep, when the source has one."""

    id: str
    turns: list[Turn]
    final: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def question(self) -> str:
        return self.turns[0].text

    @property
    def answer(self) -> str:
        return self.turns[1].text if len(self.turns) > 1 else ""


@dataclass
class ColumnMap:
    """Which source columns hold what; ``options`` with an ``answer`` letter or index is a multiple choice."""

    question: str = "question"
    answer: str = "answer"
    id: str | None = None
    options: str | None = None
    turns: str | None = None
    final: str | None = None
    question_audio: str | None = None  # a recording of the question (path, relative to the source file)
    answer_audio: str | None = None  # a recording of the answer

    @classmethod
    def parse(cls, text: str | None, base: ColumnMap | None = None) -> ColumnMap:
        """``question=problem,answer=solution`` (unset keys keep ``base``'s or the defaults)."""
        mapping = ColumnMap(**vars(base)) if base else cls()
        if not text:
            return mapping
        known = {f.name for f in fields(cls)}
        for item in text.split(","):
            key, eq, column = (part.strip() for part in item.partition("="))
            if not eq or key not in known or not column:
                raise SourceError(
                    f"bad column mapping {item!r}; write KEY=COLUMN with KEY in {', '.join(sorted(known))}"
                )
            setattr(mapping, key, column)
        return mapping


@dataclass(frozen=True)
class HubSpec:
    name: str
    config: str | None
    split: str


PRESETS: dict[str, tuple[HubSpec, ColumnMap, str]] = {
    "gsm8k": (HubSpec("openai/gsm8k", "main", "train"), ColumnMap(), "gsm8k"),
    "mmlu-pro": (
        HubSpec("TIGER-Lab/MMLU-Pro", None, "test"),
        ColumnMap(options="options", id="question_id"),
        "mcq",
    ),
    "hssbench": (HubSpec("", None, "train"), ColumnMap(options="options"), "mcq"),
}


def parse_hub(text: str) -> HubSpec:
    """``OWNER/NAME[:CONFIG][@SPLIT]``."""
    rest, _, split = text.partition("@")
    name, _, config = rest.partition(":")
    if name.count("/") != 1:
        raise SourceError(f"{text!r}: a Hugging Face dataset is written OWNER/NAME[:CONFIG][@SPLIT]")
    return HubSpec(name, config or None, split or "train")


def open_source(spec: str, columns: str | None = None) -> Iterator[SourceRecord]:
    """Records of the source ``spec`` in their stored order; ids are stable across runs."""
    kind, _, arg = spec.partition(":")
    kind = kind.lower()
    if kind in ("jsonl", "parquet"):
        if not arg:
            raise SourceError(f"{spec!r}: give a path, e.g. {kind}:questions.{kind}")
        path = Path(arg).expanduser()
        rows = _local_rows(kind, path)
        records = _records(rows, ColumnMap.parse(columns), "plain", prefix=path.stem)
        return _with_audio_root(records, path if path.is_dir() else path.parent)
    if kind == "hf":
        hub = parse_hub(arg)
        return _records(_hub_rows(hub), ColumnMap.parse(columns), "plain", prefix=hub.name.split("/")[1])
    if kind in PRESETS:
        hub, mapping, style = PRESETS[kind]
        if kind == "hssbench":
            if not arg:
                raise SourceError("hssbench needs its hub id: hssbench:OWNER/NAME[:CONFIG][@SPLIT]")
            hub = parse_hub(arg)
        elif arg:
            hub = parse_hub(arg)
        return _records(_hub_rows(hub), ColumnMap.parse(columns, mapping), style, prefix=kind)
    raise SourceError(
        f"unknown source {spec!r}; use jsonl:PATH, parquet:PATH, hf:OWNER/NAME[:CONFIG][@SPLIT], gsm8k, "
        "mmlu-pro or hssbench:OWNER/NAME"
    )


def _with_audio_root(records: Iterator[SourceRecord], root: Path) -> Iterator[SourceRecord]:
    """Recording paths of local sources are relative to the source's folder."""
    for record in records:
        audio = record.meta.get("audio")
        if audio:
            record.meta["audio"] = {k: str((root / v).resolve()) for k, v in audio.items()}
        yield record


def _local_rows(kind: str, path: Path) -> Iterator[dict[str, Any]]:
    if path.is_dir():
        files = sorted(path.glob(f"*.{kind}"))
        if not files:
            raise SourceError(f"{path}: no *.{kind} files in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise SourceError(f"{path}: no such file or folder")
    return _rows_of(kind, files)


def _rows_of(kind: str, files: list[Path]) -> Iterator[dict[str, Any]]:
    for file in files:
        if kind == "jsonl":
            with file.open(encoding="utf-8") as handle:
                for _, row in json_objects(handle, str(file), SourceError):
                    yield row
        else:
            import pyarrow.parquet as pq

            try:
                table = pq.ParquetFile(file)
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad files
                raise SourceError(f"{file}: not a readable Parquet file ({exc})") from exc
            for batch in table.iter_batches(batch_size=1024):
                yield from batch.to_pylist()


def _hub_rows(hub: HubSpec) -> Iterator[dict[str, Any]]:
    try:
        import datasets
    except ImportError as exc:
        raise SourceError("Hugging Face sources need the datasets package: pip install datasets") from exc
    try:
        data = datasets.load_dataset(hub.name, hub.config, split=hub.split, streaming=True)
    except Exception as exc:  # noqa: BLE001 - network, missing dataset, bad config or split
        raise SourceError(
            f"cannot open {hub.name} (config {hub.config}, split {hub.split}) from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}); check the name and the network, or download it and use "
            "parquet:PATH / jsonl:PATH"
        ) from exc
    yield from data


def _records(rows, mapping: ColumnMap, style: str, prefix: str) -> Iterator[SourceRecord]:  # type: ignore[no-untyped-def]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", prefix).strip("-").lower() or "record"
    for index, row in enumerate(rows):
        yield to_record(row, mapping, style, default_id=f"{slug}-{index:06d}", index=index)


def to_record(
    row: dict[str, Any], mapping: ColumnMap, style: str, default_id: str, index: int
) -> SourceRecord:
    """One source row -> SourceRecord under ``mapping``; ``style`` adds a preset's clean-up."""
    rid = str(row[mapping.id]) if mapping.id and row.get(mapping.id) is not None else default_id
    rid = re.sub(r"[^A-Za-z0-9_.-]+", "-", rid)
    meta = {"index": index}
    if mapping.turns:
        turns = _turns(_column(row, mapping.turns, rid), rid)
        return SourceRecord(rid, turns, meta=meta)
    question = str(_column(row, mapping.question, rid)).strip()
    answer_cell = _column(row, mapping.answer, rid)
    final = str(row[mapping.final]).strip() if mapping.final and row.get(mapping.final) is not None else None
    if mapping.options:
        options = _column(row, mapping.options, rid)
        question, answer, final = _multiple_choice(question, options, answer_cell, rid)
    else:
        answer = str(answer_cell).strip()
    if style == "gsm8k":
        answer, final = _gsm8k_answer(answer)
    audio = {
        str(turn): str(row[column])
        for turn, column in ((0, mapping.question_audio), (1, mapping.answer_audio))
        if column and row.get(column)
    }
    if audio:
        meta["audio"] = audio
    for key in ("category", "subject", "src"):
        if key in row and isinstance(row[key], str | int):
            meta[key] = row[key]
    words = row.get("keywords")  # the answer's key words, for measuring what a model says (kept as is)
    if isinstance(words, list) and all(isinstance(w, str) for w in words):
        meta["keywords"] = list(words)
    return SourceRecord(rid, [Turn("user", question), Turn("assistant", answer)], final=final, meta=meta)


def _column(row: dict[str, Any], name: str, rid: str) -> Any:
    if name not in row:
        raise SourceError(
            f"record {rid}: no column {name!r} (it has {', '.join(sorted(row))}); map columns with "
            "--columns question=COLUMN,answer=COLUMN"
        )
    return row[name]


def _turns(value: Any, rid: str) -> list[Turn]:
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list) or not value:
        raise SourceError(f"record {rid}: turns must be a non-empty list of {{role, content}} messages")
    turns = []
    for message in value:
        role = str(message.get("role", "")).lower()
        speaker = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}.get(role)
        if speaker is None:
            continue  # system messages and unknown roles are not spoken
        turns.append(Turn(speaker, str(message.get("content", "")).strip()))
    alternating = all(turn.speaker == ("user", "assistant")[i % 2] for i, turn in enumerate(turns))
    if not turns or not alternating:
        raise SourceError(f"record {rid}: turns must alternate user/assistant, starting with the user")
    return turns


def _multiple_choice(question: str, options: Any, answer: Any, rid: str) -> tuple[str, str, str]:
    """Spell the options into the question; the reply is the correct option's text."""
    if isinstance(options, str):
        options = json.loads(options)
    if not isinstance(options, list) or not options:
        raise SourceError(f"record {rid}: options must be a non-empty list")
    options = [str(o).strip() for o in options]
    key = str(answer).strip()
    if key.isdigit() and int(key) < len(options):
        correct = int(key)
    elif len(key) == 1 and key.upper() in LETTERS[: len(options)]:
        correct = LETTERS.index(key.upper())
    elif key in options:
        correct = options.index(key)
    else:
        raise SourceError(f"record {rid}: answer {key!r} names none of the {len(options)} options")
    listed = "; ".join(f"{LETTERS[i]}, {o}" for i, o in enumerate(options))
    spoken_question = f"{question} The options are: {listed}."
    return spoken_question, options[correct], options[correct]


_CALC = re.compile(r"<<[^>]*>>")


def _gsm8k_answer(answer: str) -> tuple[str, str | None]:
    """GSM8K's worked solution without calculator marks; its ``#### N`` line becomes the final answer."""
    body, _, final = answer.partition("####")
    body = _CALC.sub("", body).strip()
    final = final.strip().replace(",", "") or None
    if final:
        body = f"{body} The answer is {final}."
    return body, final
