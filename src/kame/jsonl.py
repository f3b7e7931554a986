"""JSON Lines input: one object per line, blank lines skipped, errors naming the file and line.

Oracle scripts, dataset sources and timelines are all JSON Lines written by people or other tools, so
a bad line must say exactly where it is; each caller raises its own error type.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any


def json_objects(
    lines: Iterable[str], source: str, error: type[Exception] = ValueError
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("SOURCE:LINE", object)`` for each non-blank line; raise ``error`` on a bad one."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise error(f"{where}: each line must be a JSON object")
        yield where, obj
