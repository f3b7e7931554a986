"""Moshi checkpoint info for the three moshi-based models: the KAME front-end, Kyutai STT, Kyutai TTS.

A moshi checkpoint is a ``config.json`` naming its files (``moshi_name``, ``mimi_name``,
``tokenizer_name``, optional ``mimi_config_name`` and ``lora_name``). This is the one reading of those
names into moshi's own ``CheckpointInfo``, from a folder or from Hugging Face files fetched offline-first
(``hub_file``: the local cache, the hub only when it can be reached, and a message saying what to do).
Each caller turns a failure into its own typed error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kame.hub import hub_reachable

# moshi's CheckpointInfo argument -> the config.json key naming that file (optional ones last).
FILE_KEYS = {"moshi_weights": "moshi_name", "mimi_weights": "mimi_name", "tokenizer": "tokenizer_name"}
OPTIONAL_FILE_KEYS = {"mimi_config_path": "mimi_config_name", "lora_weights": "lora_name"}


class MissingFiles(Exception):
    """Files a checkpoint names that are not there: ``(config.json key, path)`` each."""

    def __init__(self, missing: list[tuple[str, Path]]) -> None:
        super().__init__(", ".join(str(path) for _, path in missing))
        self.missing = missing


def file_names(raw: dict[str, Any], moshi_default: str) -> dict[str, str]:
    """The file each ``CheckpointInfo`` argument reads, by its config.json key or moshi's default name."""
    from moshi.models import loaders

    defaults = {"moshi_name": moshi_default, "mimi_name": loaders.MIMI_NAME}
    defaults["tokenizer_name"] = loaders.TEXT_TOKENIZER_NAME
    names = {arg: raw.get(key, defaults[key]) for arg, key in FILE_KEYS.items()}
    names.update({arg: raw[key] for arg, key in OPTIONAL_FILE_KEYS.items() if raw.get(key)})
    return names


def checkpoint_info(
    repo: str,
    config_path: Path,
    raw: dict[str, Any],
    locate: Callable[[str, str], Path],
    *,
    moshi_default: str = "model.safetensors",
    **given: Any,
) -> Any:
    """moshi's ``CheckpointInfo`` for the files ``raw`` (the parsed config.json) names, each found by
    ``locate(config_key, name)``; ``given`` replaces arguments (a LoRA passed on the command line). Raises
    ``MissingFiles`` naming every located file that does not exist."""
    from moshi.models import loaders

    keys = FILE_KEYS | OPTIONAL_FILE_KEYS
    names = {arg: name for arg, name in file_names(raw, moshi_default).items() if arg not in given}
    paths = {arg: Path(locate(keys[arg], str(name))) for arg, name in names.items()}
    missing = [(keys[arg], path) for arg, path in paths.items() if not path.is_file()]
    if missing:
        raise MissingFiles(missing)
    files = {**paths, **{arg: value for arg, value in given.items() if value is not None}}
    return loaders.CheckpointInfo.from_hf_repo(repo, config_path=config_path, **files)


def hub_file(repo: str, name: str, error: Callable[[str], Exception], how: str) -> Path:
    """A file of a Hugging Face repository: from the local cache, else downloaded if the hub can be
    reached; otherwise ``error(message)`` is raised at once, the message ending with ``how``.

    moshi's own lookup is not used: offline it retries for most of a minute before failing.
    """
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, name, local_files_only=True))
    except Exception:  # noqa: BLE001, S110 - not cached: try the hub below
        pass
    if not hub_reachable():
        raise error(f"{repo}/{name} is not in the Hugging Face cache and the hub is unreachable; {how}")
    try:
        return Path(hf_hub_download(repo, name))
    except Exception as exc:  # noqa: BLE001 - unknown, gated or unreachable repository
        raise error(f"cannot download {repo}/{name} ({type(exc).__name__}: {exc}); {how}") from exc
