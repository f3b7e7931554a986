"""An evaluation folder's records: append-only JSON Lines that a killed run can be resumed from.

Every finished piece of work (one system's spoken conversation over one question, one judgment) is one
or more lines appended and flushed at once. On a rerun the records already there are skipped; a line
cut short by a kill, or a conversation whose turns were not all written, is dropped (the file is
rewritten without it) and that work is done again. ``settings.json`` remembers what the answers were
made with, so a rerun with other models cannot mix two experiments in one folder.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

from kame.errors import UserError

Record = dict[str, Any]


class EvalFolderError(UserError, ValueError):
    """The output folder holds another experiment; the message says which setting differs."""


class RecordFile:
    """One JSON Lines file of records, loaded once and appended to under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.records: list[Record] = []

    def load(self, complete: Callable[[list[Record]], list[Record]] | None = None) -> list[Record]:
        """Read what is there; ``complete`` keeps the records that make whole units of work. Dropped
        lines (cut short, or of unfinished work) are removed from the file."""
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        records: list[Record] = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(record, dict):
                records.append(record)
        kept = complete(records) if complete else records
        if len(kept) != len(lines):
            self._rewrite(kept)
        self.records = kept
        return kept

    def append(self, records: Iterable[Record]) -> None:
        records = list(records)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as file:
                file.write(text)
                file.flush()
            self.records.extend(records)

    def _rewrite(self, records: list[Record]) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        tmp.replace(self.path)


def whole_groups(key: Callable[[Record], Hashable], size: Callable[[Record], int]) -> Callable:
    """A ``complete`` filter: records grouped by ``key``; a group counts once it has ``size`` records
    (the last ``size`` written win, so work redone after a partial write replaces it)."""

    def complete(records: list[Record]) -> list[Record]:
        groups: dict[Hashable, list[Record]] = {}
        for record in records:
            groups.setdefault(key(record), []).append(record)
        kept = {
            id(r)
            for group in groups.values()
            if len(group) >= size(group[0])
            for r in group[-size(group[0]) :]
        }
        return [r for r in records if id(r) in kept]

    return complete


def check_settings(path: Path, settings: dict[str, Any], binding: tuple[str, ...]) -> None:
    """Write ``settings`` to ``path``, or check that the ``binding`` ones match what is there."""
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        for name in binding:
            if name in before and before[name] != settings.get(name):
                raise EvalFolderError(
                    f"{path.parent} holds results made with {name}={before[name]!r}, "
                    f"not {settings.get(name)!r}; "
                    "use another --out for a new experiment, or the same flags to resume"
                )
        settings = {**before, **settings}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
