"""Settings shared by every LLM provider, and the parsing of provider spec strings.

A provider is named by a spec string so that command lines and config files can pick one at run time:
``local``, ``local:/path/model.gguf``, ``openai:MODEL``, ``openai:MODEL@http://host:port/v1``,
``anthropic:MODEL``, ``gemini:MODEL``. Everything else (keys, base URLs, timeouts) is an ``LLMOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from kame.errors import UserError

PROVIDERS = ("local", "openai", "anthropic", "gemini", "route")


class LLMSpecError(UserError, ValueError):
    """A spec string or option that names no usable provider; the message says what to write."""


@dataclass
class LLMOptions:
    """How to reach a provider and how patient to be with it.

    ``timeout`` bounds the wait for the first chunk (after queueing behind other sessions for ``local``)
    and between chunks; ``retries`` more attempts are made, ``backoff`` * 2**i seconds apart, for errors
    that can pass (unreachable server, timeout, HTTP 429/5xx), and only before the first chunk.
    """

    api_key: str | None = None
    base_url: str | None = None
    timeout: float = 30.0
    retries: int = 2
    backoff: float = 0.5
    # local (llama.cpp) only
    threads: int | None = None
    context: int = 4096
    seed: int | None = None  # sampling seed (remote: sent where the API takes one)
    reuse_prompt: bool = True  # False: read every prompt from scratch, so answers never depend on earlier
    # requests (llama.cpp's prefix reuse changes the float rounding); repeatable datasets need that
    grammar: str | None = None  # a llama.cpp GBNF grammar every answer must follow (a judge's rating)

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> LLMOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise LLMSpecError(
                f"unknown LLM option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        opts = cls(**options)
        if opts.timeout <= 0:
            raise LLMSpecError(f"timeout must be positive seconds, got {opts.timeout}")
        if opts.retries < 0:
            raise LLMSpecError(f"retries must be 0 or more, got {opts.retries}")
        if opts.backoff < 0:
            raise LLMSpecError(f"backoff must be 0 or more seconds, got {opts.backoff}")
        if opts.grammar is not None and not opts.grammar.strip():
            raise LLMSpecError("grammar is empty; give a GBNF grammar with a root rule, or none")
        return opts


@dataclass(frozen=True)
class LLMSpec:
    provider: str
    model: str | None  # model name, or GGUF path for ``local``; None = the provider's default
    base_url: str | None = None


def parse_spec(spec: str) -> LLMSpec:
    """``provider[:model][@base_url]`` -> LLMSpec; the base URL suffix must start with http(s)://."""
    text = spec.strip()
    if not text:
        raise LLMSpecError(
            "empty LLM spec; use local, local:/path.gguf, openai:MODEL, anthropic:MODEL or gemini:MODEL"
        )
    provider, _, rest = text.partition(":")
    provider = provider.lower()
    if provider not in PROVIDERS:
        raise LLMSpecError(
            f"unknown LLM provider {provider!r} in {spec!r}; use local, local:PATH.gguf, openai:MODEL[@URL], "
            "anthropic:MODEL, gemini:MODEL or route:FILE.yaml (e.g. openai:gpt-4.1-mini)"
        )
    base_url = None
    at = max(rest.rfind("@http://"), rest.rfind("@https://"))
    if at >= 0 and provider not in ("local", "route"):
        rest, base_url = rest[:at], rest[at + 1 :]
    model = rest or None
    if provider != "local" and model is None:
        what = (
            "the routing file, e.g. route:routes.yaml"
            if provider == "route"
            else f"the model, e.g. {provider}:MODEL"
        )
        raise LLMSpecError(f"{spec!r}: name {what}")
    return LLMSpec(provider=provider, model=model, base_url=base_url)
