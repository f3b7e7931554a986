"""Oracle scripts: a timed list of oracle operations for offline runs.

One JSON object per line: ``{"time": seconds, "op": "reset" | "append" | "end", "text": "..."}``.
An operation at ``time`` is applied before the step of frame ``floor(time * 12.5)``. ``end`` marks the
oracle's text as complete, releasing its held-back last word (see ``oracle_track``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from kame.jsonl import json_objects

FRAME_RATE = 12.5
OPS = ("reset", "append", "end")


class OracleScriptError(ValueError):
    """A malformed oracle script; the message names the line."""


@dataclass(frozen=True)
class OracleOp:
    time: float
    op: str
    text: str = ""

    @property
    def frame(self) -> int:
        return math.floor(self.time * FRAME_RATE + 1e-9)


def parse_oracle_script(lines: list[str], source: str = "<script>") -> list[OracleOp]:
    """Parse and validate; operations come back ordered by frame, keeping file order within a frame."""
    ops: list[OracleOp] = []
    for where, obj in json_objects(lines, source, OracleScriptError):
        time, op, text = obj.get("time"), obj.get("op"), obj.get("text", "")
        if not isinstance(time, int | float) or isinstance(time, bool) or not math.isfinite(time) or time < 0:
            raise OracleScriptError(f"{where}: 'time' must be a number of seconds >= 0, got {time!r}")
        if op not in OPS:
            raise OracleScriptError(f"{where}: 'op' must be one of {', '.join(OPS)}, got {op!r}")
        if not isinstance(text, str):
            raise OracleScriptError(f"{where}: 'text' must be a string")
        if op == "append" and not text:
            raise OracleScriptError(f"{where}: an append needs a non-empty 'text'")
        ops.append(OracleOp(float(time), op, text))
    return sorted(ops, key=lambda o: o.frame)


def load_oracle_script(path: str | Path) -> list[OracleOp]:
    path = Path(path)
    if not path.is_file():
        raise OracleScriptError(f"{path}: no such oracle script")
    return parse_oracle_script(path.read_text().splitlines(), str(path))
