"""Helpers for the LLM tests: run a coroutine; the question every test asks."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/llm/llm_servers.py


@pytest.fixture
def run():
    """Run a coroutine to completion on a fresh event loop (no pytest-asyncio needed)."""
    return lambda coro: asyncio.run(coro)
