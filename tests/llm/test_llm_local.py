"""The embedded llama.cpp provider: it answers, streams, shares one model, and stops when cancelled."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from kame.backend.llm import ChatMessage, LLMError, create_llm
from kame.backend.llm.local import default_model_path

QUESTION = [
    ChatMessage("system", "You are a helpful assistant. Answer in one short sentence."),
    ChatMessage("user", "What is the capital of France?"),
]

LONG = [
    ChatMessage("system", "You are a storyteller."),
    ChatMessage("user", "Tell me a very long story about a dragon who learns to bake bread."),
]


def test_default_model_ships_in_the_package():
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_local_answers_a_simple_question_in_several_chunks(run):
    llm = create_llm("local", threads=1)

    async def ask() -> list[str]:
        return [chunk async for chunk in llm.stream_chat(QUESTION, max_tokens=40, temperature=0.0)]

    chunks = run(ask())
    answer = "".join(chunks)
    assert "Paris" in answer, answer
    assert len(chunks) >= 3, chunks


def test_cancelling_the_consumer_stops_decoding(run):
    llm = create_llm("local", threads=1)
    model = llm.model

    async def scenario() -> tuple[int, float]:
        got: list[str] = []

        async def consume() -> None:
            async for chunk in llm.stream_chat(LONG, max_tokens=400, temperature=0.7):
                got.append(chunk)

        task = asyncio.create_task(consume())
        while len(got) < 5:
            await asyncio.sleep(0.005)
        start_tokens = model.tokens_decoded
        task.cancel()
        cancelled_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        while model.busy:  # the worker releases the model when it stops
            await asyncio.sleep(0.005)
        freed_after = time.monotonic() - cancelled_at
        await asyncio.sleep(0.3)
        return model.tokens_decoded - start_tokens, freed_after

    before = model.tokens_decoded
    extra_tokens, freed_after = run(scenario())
    assert freed_after < 0.5, f"the model stayed busy {freed_after:.2f} s after the cancel"
    assert extra_tokens <= 3, f"{extra_tokens} tokens were decoded after the cancel"
    assert model.tokens_decoded - before < 40, "decoding ran on towards max_tokens"


def test_sessions_queue_on_the_shared_model(run):
    first, second = create_llm("local", threads=1), create_llm("local", threads=1)
    assert first.model is second.model  # one loaded model per process

    async def both() -> list[str]:
        return await asyncio.gather(
            first.complete(QUESTION, max_tokens=30, temperature=0.0),
            second.complete(QUESTION, max_tokens=30, temperature=0.0),
        )

    a, b = run(both())
    assert "Paris" in a and a == b  # greedy decoding: the same answer, one after the other


def test_local_timeout_is_an_llm_error(run):
    llm = create_llm("local", threads=1, timeout=0.001)
    with pytest.raises(LLMError, match="timeout") as info:
        run(llm.complete(LONG, max_tokens=50))
    assert info.value.retryable
    deadline = time.monotonic() + 2.0
    while llm.model.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not llm.model.busy, "the timed-out request kept the model"


def test_prompt_longer_than_the_context_is_clear(run):
    llm = create_llm("local", threads=1, context=256)
    long_prompt = [ChatMessage("user", "word " * 600)]
    with pytest.raises(LLMError, match="context"):
        run(llm.complete(long_prompt, max_tokens=10))


def test_answers_do_not_depend_on_earlier_requests_without_prompt_reuse(run):
    """With ``reuse_prompt=False`` and a seed, an answer is a function of its prompt alone (datasets)."""
    llm = create_llm("local", threads=1, seed=7, reuse_prompt=False)
    prompts = [
        [
            ChatMessage("system", "Reply in at most 20 words."),
            ChatMessage("user", f"Tell me about the number {i}."),
        ]
        for i in range(4)
    ]

    async def answers(order: list[int]) -> dict[int, str]:
        return {i: await llm.complete(prompts[i], temperature=0.7, max_tokens=24) for i in order}

    forward, backward = run(answers([0, 1, 2, 3])), run(answers([3, 1, 2, 0]))
    assert forward == backward


RATING = 'root ::= "Rating: [[" ("10" | [1-9]) "]]"'


def test_a_grammar_constrains_every_answer(run):
    llm = create_llm("local", threads=1, grammar=RATING)
    prompt = [ChatMessage("user", "Tell me about dragons, then rate dragons from 1 to 10.")]
    answer = run(llm.complete(prompt, max_tokens=16, temperature=0.7))
    assert re.fullmatch(r"Rating: \[\[(10|[1-9])\]\]", answer), answer


def test_a_grammar_that_does_not_parse_is_an_llm_error(run):
    llm = create_llm("local", threads=1, grammar='root ::= "unclosed')
    with pytest.raises(LLMError, match="grammar"):
        run(llm.complete([ChatMessage("user", "Hi")], max_tokens=4))


def test_a_grammar_needs_a_local_model():
    from kame.backend.llm.options import LLMSpecError

    with pytest.raises(LLMSpecError, match="local"):
        create_llm("openai:gpt-4.1-mini", api_key="k", grammar=RATING)
