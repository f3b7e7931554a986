"""Oracle scripts: a timed list of oracle operations for offline runs.

One JSON object per line: ``{"time": seconds, "op": "reset" | "append" | "end", "text": "..."}``.
An operation at ``time`` is applied before the step of frame ``floor(time * 12.5)``; a reset at time 0
puts the start token at step 0. A script's oracle text is complete after its last operation (before the
next reset, or at the end of the script), so its last word is always fed; ``end`` stays valid but is
never needed (see ``oracle_track``).
"""

from __future__ import annotations

import math
from pathlib import Path

from kame.errors import UserError
from kame.jsonl import json_objects
from kame.oracle import ORACLE_KINDS, OracleOp


class OracleScriptError(UserError, ValueError):
    """A malformed oracle script; the message names the line."""


def completes_oracle(ops: list[OracleOp]) -> list[bool]:
    """For each operation of an ordered script: is it its oracle's last one (the text is then complete)?"""
    return [index + 1 == len(ops) or ops[index + 1].kind == "reset" for index in range(len(ops))]


def parse_oracle_script(lines: list[str], source: str = "<script>") -> list[OracleOp]:
    """Parse and validate; operations come back ordered by frame, keeping file order within a frame."""
    ops: list[OracleOp] = []
    for where, obj in json_objects(lines, source, OracleScriptError):
        time, op, text = obj.get("time"), obj.get("op"), obj.get("text", "")
        if not isinstance(time, int | float) or isinstance(time, bool) or not math.isfinite(time) or time < 0:
            raise OracleScriptError(f"{where}: 'time' must be a number of seconds >= 0, got {time!r}")
        if op not in ORACLE_KINDS:
            raise OracleScriptError(f"{where}: 'op' must be one of {', '.join(ORACLE_KINDS)}, got {op!r}")
        if not isinstance(text, str):
            raise OracleScriptError(f"{where}: 'text' must be a string")
        if op == "append" and not text:
            raise OracleScriptError(f"{where}: an append needs a non-empty 'text'")
        ops.append(OracleOp(op, text, t=float(time)))
    return sorted(ops, key=lambda o: o.frame)


def load_oracle_script(path: str | Path) -> list[OracleOp]:
    path = Path(path)
    if not path.is_file():
        raise OracleScriptError(f"{path}: no such oracle script")
    return parse_oracle_script(path.read_text().splitlines(), str(path))
