"""Prompt files of the oracle engine (plain text, replaceable by the user's own file)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_SYSTEM_PROMPT = "oracle_system.txt"
CASCADE_SYSTEM_PROMPT = "cascade_system.txt"  # the cascade's: a brief spoken answer to a finished turn


def load_prompt(path: str | Path | None = None, default: str = DEFAULT_SYSTEM_PROMPT) -> str:
    """The system prompt: ``path`` if given, else the packaged ``default``. Errors name the file."""
    if path is None:
        return resources.files(__package__).joinpath(default).read_text(encoding="utf-8").strip()
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"system prompt file {file} does not exist")
    text = file.read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"system prompt file {file} is empty")
    return text
