"""``create_llm(spec, **options)``: the one place that turns a spec string into a provider.

Provider modules are imported only when asked for, so using ``local`` never loads the cloud clients.
"""

from __future__ import annotations

from typing import Any

from kame.backend.llm.base import LLMProvider
from kame.backend.llm.options import LLMOptions, LLMSpecError, parse_spec

DEFAULT_LLM = "local"


def create_llm(spec: str = DEFAULT_LLM, **options: Any) -> LLMProvider:
    """A provider for ``spec`` (``local``, ``local:PATH.gguf``, ``openai:MODEL[@URL]``,
    ``anthropic:MODEL[@URL]``, ``gemini:MODEL[@URL]``); ``options`` are ``LLMOptions`` fields.

    Raises LLMSpecError (a ValueError) for a malformed spec or option, LLMError when the provider cannot
    be set up (missing key, missing model file).
    """
    parsed = parse_spec(spec)
    opts = LLMOptions.from_kwargs(options)
    if parsed.base_url and not opts.base_url:
        opts.base_url = parsed.base_url
    if opts.grammar is not None and parsed.provider != "local":
        raise LLMSpecError(
            f"{spec!r}: a grammar constrains llama.cpp's sampling, so it needs a local model (local[:PATH])"
        )
    if parsed.provider == "local":
        from kame.backend.llm.local import LocalLLM

        return LocalLLM(parsed.model, opts)
    if parsed.provider == "openai":
        from kame.backend.llm.openai_api import OpenAIChat

        return OpenAIChat(parsed.model or "", opts)
    if parsed.provider == "route":
        from kame.backend.llm.route import RoutingLLM

        return RoutingLLM(parsed.model or "", opts)
    if parsed.provider == "anthropic":
        from kame.backend.llm.anthropic_api import AnthropicChat

        return AnthropicChat(parsed.model or "", opts)
    from kame.backend.llm.gemini_api import GeminiChat

    return GeminiChat(parsed.model or "", opts)
