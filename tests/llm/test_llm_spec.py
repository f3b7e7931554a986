"""Spec strings and options: what create_llm accepts and the errors it gives for what it does not."""

from __future__ import annotations

import pytest

from kame.backend.llm import ChatMessage, LLMError, LLMSpecError, create_llm, parse_spec


def test_parse_spec_forms():
    assert parse_spec("local").provider == "local" and parse_spec("local").model is None
    assert parse_spec("local:/m/x.gguf").model == "/m/x.gguf"
    spec = parse_spec("openai:llama3:8b@http://localhost:11434/v1")
    assert (spec.provider, spec.model, spec.base_url) == ("openai", "llama3:8b", "http://localhost:11434/v1")
    assert parse_spec("anthropic:claude-sonnet-4-0").base_url is None
    assert parse_spec("gemini:gemini-2.5-flash").model == "gemini-2.5-flash"


@pytest.mark.parametrize("bad", ["", "gpt4", "mistral:large", "openai", "openai:"])
def test_bad_specs_say_what_to_write(bad):
    with pytest.raises(LLMSpecError, match="openai:MODEL|name the model"):
        parse_spec(bad)


def test_unknown_option_is_rejected():
    with pytest.raises(LLMSpecError, match="unknown LLM option"):
        create_llm("local", temprature=0.2)


def test_missing_keys_are_clear(monkeypatch):
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GOOGLE_GEMINI_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LLMError, match="OPENAI_API_KEY"):
        create_llm("openai:gpt-4.1")
    with pytest.raises(LLMError, match="ANTHROPIC_API_KEY"):
        create_llm("anthropic:claude-sonnet-4-0")
    with pytest.raises(LLMError, match="GEMINI_API_KEY"):
        create_llm("gemini:gemini-2.5-flash")
    # a self-hosted OpenAI-compatible server needs no key
    assert create_llm("openai:any@http://127.0.0.1:9/v1").name == "openai"


def test_missing_gguf_is_clear(tmp_path):
    with pytest.raises(LLMError, match="no such GGUF file"):
        create_llm(f"local:{tmp_path / 'nope.gguf'}")


def test_not_a_gguf_is_clear(tmp_path, run):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a model")
    llm = create_llm(f"local:{bad}")
    with pytest.raises(LLMError, match="cannot load it as a GGUF model"):
        run(llm.complete([ChatMessage("user", "hi")]))
