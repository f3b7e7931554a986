"""The layering rule (README, "How the code is organised"): dependencies point one way.

``frontend``, ``backend`` and ``audio`` import nothing from ``runtime``, ``server``, ``cli``, ``data``,
``train`` or ``eval``; ``runtime`` nothing above it; ``server`` nothing from ``cli``; only ``cli`` (and
``data``/``train``/``eval`` among themselves) import ``data``, ``train`` or ``eval``; the foundation
modules at the top of the package (frames, events, timeline, oracle, ...) import no layer at all. Every
import counts, including those inside functions, since a lazy import runs back up just the same.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import kame

PACKAGE = Path(kame.__file__).parent
LAYERS = ("audio", "frontend", "backend", "runtime", "server", "data", "train", "eval", "cli")
TOP = ("data", "train", "eval", "cli")  # nothing below these imports them

# What each layer may not import.
FORBIDDEN: dict[str, set[str]] = {
    "foundation": set(LAYERS),
    "audio": set(LAYERS) - {"audio"},
    "frontend": {"runtime", "server", "cli", "data", "train", "eval"},
    "backend": {"runtime", "server", "cli", "data", "train", "eval"},
    "runtime": {"server", "cli", "data", "train", "eval"},
    "server": {"cli", "data", "train", "eval"},
    "data": {"cli", "server", "runtime"},
    "train": {"cli", "server", "runtime"},
    "eval": {"cli", "server"},
    "cli": set(),
}


def layer_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    if parts[-1] == "__main__.py":
        return "cli"  # ``python -m kame`` (or ``-m kame.train``) is the command line
    return parts[0] if len(parts) > 1 and parts[0] in LAYERS else "foundation"


def kame_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported layer) for every ``kame.<layer>`` import in the file, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "kame" and len(parts) > 1 and parts[1] in LAYERS:
                found.append((node.lineno, parts[1]))
    return found


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = layer_of(path)
        for line, target in kame_imports(path):
            if target in FORBIDDEN[layer]:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {layer} imports kame.{target}")
    return bad


def test_imports_point_one_way():
    assert violations() == []


def test_the_rule_catches_an_import_that_runs_back_up(tmp_path, monkeypatch):
    """The checker itself: a back-end module importing the runtime (lazily) is reported."""
    fake = tmp_path / "kame"
    (fake / "backend").mkdir(parents=True)
    (fake / "backend" / "bad.py").write_text("def f():\n    from kame.runtime.session import Session\n")
    (fake / "events.py").write_text("import kame.server.protocol\n")
    (fake / "runtime").mkdir()
    (fake / "runtime" / "ok.py").write_text("from kame.backend import oracle_engine\nimport kame.frames\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert violations() == [
        "kame/backend/bad.py:2: backend imports kame.runtime",
        "kame/events.py:1: foundation imports kame.server",
    ]
