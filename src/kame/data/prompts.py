"""The simulator's and the rewriter's prompts, as text files a user can edit.

Each prompt is a file ``NAME.txt``: a system message, a line ``---``, then the user message. Both are
templates with ``{field}`` placeholders (``{history}``, ``{heard}``, ``{reply}``, ``{keywords}``,
``{question}``, ``{answer}``, ``{final}``). The defaults ship in ``kame/data/prompts/``; a folder given with
``--prompts DIR`` overrides any of them by name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kame.backend.llm import ChatMessage
from kame.errors import UserError

NAMES = (
    "spoken_question",
    "spoken_answer",
    "oracle_level0",
    "oracle_level1",
    "oracle_level2",
    "oracle_level3",
    "oracle_level4",
)
SEPARATOR = "\n---\n"


class PromptError(UserError, ValueError):
    """A prompt file that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Prompt:
    name: str
    system: str
    user: str

    def render(self, **values: str) -> list[ChatMessage]:
        try:
            return [
                ChatMessage("system", self.system.format(**values).strip()),
                ChatMessage("user", self.user.format(**values).strip()),
            ]
        except (KeyError, IndexError, ValueError) as exc:
            raise PromptError(
                f"prompt {self.name}: bad placeholder {exc}; available: {', '.join(sorted(values))} "
                "(write literal braces as {{ and }})"
            ) from exc


def parse_prompt(name: str, text: str) -> Prompt:
    if SEPARATOR not in text:
        raise PromptError(f"prompt {name}: separate the system and user messages with a line '---'")
    system, user = text.split(SEPARATOR, 1)
    return Prompt(name, system.strip(), user.strip())


@dataclass(frozen=True)
class PromptSet:
    prompts: dict[str, Prompt]
    fingerprint: str  # changes whenever any prompt text changes (recorded with the dataset)

    def __getitem__(self, name: str) -> Prompt:
        return self.prompts[name]


def load_prompts(folder: str | Path | None = None) -> PromptSet:
    """The default prompts, each replaced by ``folder/NAME.txt`` where that file exists."""
    override = Path(folder).expanduser() if folder else None
    if override is not None and not override.is_dir():
        raise PromptError(f"{override}: no such prompts folder")
    if override is not None:
        unknown = sorted(p.stem for p in override.glob("*.txt") if p.stem not in NAMES)
        if unknown:
            raise PromptError(f"{override}: unknown prompt files {unknown}; the names are {', '.join(NAMES)}")
    defaults = resources.files("kame.data").joinpath("prompts")
    prompts = {}
    digest = hashlib.sha256()
    for name in NAMES:
        path = override / f"{name}.txt" if override is not None else None
        text = path.read_text(encoding="utf-8") if path and path.is_file() else None
        if text is None:
            text = defaults.joinpath(f"{name}.txt").read_text(encoding="utf-8")
        prompts[name] = parse_prompt(name, text)
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return PromptSet(prompts, digest.hexdigest()[:16])
