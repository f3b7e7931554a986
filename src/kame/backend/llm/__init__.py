"""LLM providers behind one async streaming chat interface, chosen by a spec string at run time."""

from kame.backend.llm.base import ChatMessage, LLMError, LLMProvider
from kame.backend.llm.options import LLMOptions, LLMSpecError, parse_spec
from kame.backend.llm.registry import DEFAULT_LLM, create_llm

__all__ = [
    "DEFAULT_LLM",
    "ChatMessage",
    "LLMError",
    "LLMOptions",
    "LLMProvider",
    "LLMSpecError",
    "create_llm",
    "parse_spec",
]
