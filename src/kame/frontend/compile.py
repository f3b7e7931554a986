"""When to let moshi ``torch.compile`` its hot functions.

moshi compiles a few functions (RoPE, gating, ...) lazily on first call. On a GPU that pays off; on a
CPU the first call spends minutes in the compiler for no measurable gain at these sizes, so front-end
code runs under ``compile_policy(device)``, which turns compiling off on CPUs.
"""

from __future__ import annotations

import contextlib

import torch
from moshi.utils.compile import no_compile


def compile_policy(device: torch.device | str) -> contextlib.AbstractContextManager:
    return no_compile() if torch.device(device).type == "cpu" else contextlib.nullcontext()
