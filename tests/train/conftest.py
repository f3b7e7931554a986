"""Training test fixtures: a real dataset built by ``kame data build`` (espeak voices, the scripted
simulator LLM of tests/data) and a tiny random front-end in the released layout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "data"))  # tests/data/sim_llm.py, data_checks.py

from data_checks import QA  # noqa: E402
from sim_llm import serve_in_thread  # noqa: E402


def build_dataset(out: Path, limit: int) -> Path:
    from kame.data.build import BuildConfig, build

    source = out.parent / f"{out.name}-qa.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in QA))
    with serve_in_thread() as url:
        config = BuildConfig(
            source=f"jsonl:{source}", out=out, llm=f"openai:sim@{url}", tts="espeak", limit=limit
        )
        summary = build(config, progress=False)
    assert summary["written"] == limit
    return out


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """Six spoken Q&A dialogues with simulated oracle events (Mimi codes not yet cached)."""
    return build_dataset(tmp_path_factory.mktemp("train-data") / "qa", 6)


@pytest.fixture(scope="session")
def frontend(tiny_checkpoint):
    from kame.frontend.checkpoint import load_frontend

    return load_frontend(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def records(dataset, frontend):
    from kame.train.data import load_records

    return load_records([dataset], frontend)
