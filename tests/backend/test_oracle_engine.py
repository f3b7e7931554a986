"""The oracle engine's policy, streaming, cancellation and failure handling.

Most tests use ``ScriptedLLM``, a real ``LLMProvider`` that streams a scripted answer with real asyncio
timing (a first-token delay and a gap between chunks), so that the policy can be checked against exact
timings. One test drives a real local HTTP server that fails on purpose through the ``openai`` provider,
and one the embedded SmolLM2.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from kame.backend.llm.base import ChatMessage, LLMError, LLMProvider
from kame.backend.oracle_engine import OracleConfig, OracleEngine, OraclePolicy
from kame.backend.prompts import load_prompt
from kame.backend.stt.base import Transcript
from kame.oracle import OracleOp
from kame.timeline import Timeline


class ScriptedLLM(LLMProvider):
    """Streams ``answer(messages)`` word by word: ``first_token_s`` (per call) then ``chunk_s`` apart."""

    name = "scripted"

    def __init__(
        self,
        answer: str | Callable[[list[ChatMessage]], str] = "The answer is forty two.",
        first_token_s: float | Callable[[int], float] = 0.05,
        chunk_s: float = 0.02,
        fail_calls: tuple[int, ...] = (),
    ) -> None:
        self.answer = answer
        self.first_token_s = first_token_s
        self.chunk_s = chunk_s
        self.fail_calls = fail_calls
        self.calls: list[list[ChatMessage]] = []
        self.stopped = 0  # streams closed before their end (cancelled by the engine)
        self.active = 0

    async def stream_chat(self, messages, *, max_tokens=96, temperature=0.3) -> AsyncIterator[str]:
        index = len(self.calls)
        self.calls.append(list(messages))
        delay = self.first_token_s(index) if callable(self.first_token_s) else self.first_token_s
        text = self.answer(messages) if callable(self.answer) else self.answer
        self.active += 1
        finished = False
        try:
            await asyncio.sleep(delay)
            if index in self.fail_calls:
                raise LLMError(self.name, f"call {index} failed on purpose (bad key)")
            words = text.split(" ")
            for position, word in enumerate(words):
                yield word if position == len(words) - 1 else word + " "
                await asyncio.sleep(self.chunk_s)
            finished = True
        finally:
            self.active -= 1
            if not finished and index not in self.fail_calls:
                self.stopped += 1


def partial(text: str, audio_t: float = 0.0, utterance: int = 0) -> Transcript:
    return Transcript("partial", text, (), utterance, audio_t)


def final(text: str, audio_t: float = 0.0, utterance: int = 0) -> Transcript:
    return Transcript("final", text, (), utterance, audio_t, stable=len(text.split()))


async def make(llm: LLMProvider, **config) -> tuple[OracleEngine, list[OracleOp]]:
    policy = config.pop("policy", OraclePolicy())
    events: list[OracleOp] = []
    engine = OracleEngine(llm, events.append, config=OracleConfig(policy=policy, **config), session="t")
    await engine.start()
    return engine, events


def by_stream(events: list[OracleOp]) -> dict[int, list[OracleOp]]:
    out: dict[int, list[OracleOp]] = {}
    for event in events:
        out.setdefault(event.stream_id, []).append(event)
    return out


def test_reset_then_appends_in_order_then_end_on_the_event_loop():
    async def scenario():
        llm = ScriptedLLM("Paris is the capital of France.")
        engine, events = await make(llm)
        loop_thread = threading.get_ident()
        threads = []
        engine.set_sink(lambda e: (threads.append(threading.get_ident()), events.append(e)))
        engine.on_transcript(final("what is the capital of france", audio_t=2.0))
        assert await engine.wait_idle(5)
        await engine.aclose()
        return engine, events, threads, loop_thread

    engine, events, threads, loop_thread = asyncio.run(scenario())
    kinds = [e.kind for e in events]
    assert kinds[0] == "reset" and kinds[-1] == "end" and set(kinds[1:-1]) == {"append"}
    assert events[0].text == "Paris "  # the reset carries the first chunk
    assert "".join(e.text for e in events[:-1]) == "Paris is the capital of France."
    assert {e.stream_id for e in events} == {0}
    assert [e.t for e in events] == sorted(e.t for e in events)
    assert set(threads) == {loop_thread}
    assert engine.current_oracle == "Paris is the capital of France."
    types = [e["type"] for e in engine.timeline.events]
    assert types[:4] == ["final", "llm_request", "llm_first_token", "oracle_reset"]
    assert types[-2:] == ["llm_done", "oracle_end"]
    request = engine.timeline.of_type("llm_request")[0]
    assert request["covered"] == 2.0 and request["reason"] == "final"


def test_two_new_words_restart_and_the_stale_stream_is_cancelled():
    async def scenario():
        llm = ScriptedLLM(lambda m: "answer about " + m[-1].content + " and more words to come", chunk_s=0.1)
        engine, events = await make(llm)
        engine.on_transcript(partial("what is"))
        await asyncio.sleep(0.3)  # stream 0 is mid-answer
        cancelled_at = engine.timeline.now()
        engine.on_transcript(partial("what is the capital"))
        await asyncio.sleep(0.05)
        assert llm.active == 1  # the stale request really stopped
        assert await engine.wait_idle(5)
        await engine.aclose()
        return engine, events, llm, cancelled_at

    engine, events, llm, cancelled_at = asyncio.run(scenario())
    streams = by_stream(events)
    assert sorted(streams) == [0, 1]
    assert all(e.t <= cancelled_at + 0.01 for e in streams[0])  # nothing from stream 0 after its cancel
    assert "end" not in [e.kind for e in streams[0]]
    assert [e.kind for e in streams[1]][0] == "reset" and streams[1][-1].kind == "end"
    assert "".join(e.text for e in streams[1]).startswith("answer about what is the capital")
    cancel = engine.timeline.of_type("oracle_cancel")
    assert [(c["stream"], c["reason"], c["had_tokens"]) for c in cancel] == [(0, "restart", True)]
    assert llm.stopped == 1 and engine.stats.cancelled == 1


def test_one_new_word_does_not_interrupt_a_running_answer():
    async def scenario():
        llm = ScriptedLLM(chunk_s=0.05)
        engine, events = await make(llm)
        engine.on_transcript(partial("what is"))
        await asyncio.sleep(0.1)
        engine.on_transcript(partial("what is the"))
        assert await engine.wait_idle(5)
        await engine.aclose()
        return engine

    engine = asyncio.run(scenario())
    # The first answer ran to its end; the word that came meanwhile is asked about afterwards.
    assert engine.stats.cancelled == 0
    requests = engine.timeline.of_type("llm_request")
    assert [(r["reason"], r["user_words"]) for r in requests] == [("words", 2), ("idle", 3)]


def test_restarts_are_rate_limited_and_the_newest_words_are_asked_last():
    async def scenario():
        llm = ScriptedLLM(first_token_s=0.02, chunk_s=0.01)
        engine, _ = await make(llm)
        words = []
        for index in range(16):  # two new words every 80 ms for 1.3 s
            words += [f"w{index}a", f"w{index}b"]
            engine.on_transcript(partial(" ".join(words)))
            await asyncio.sleep(0.08)
        assert await engine.wait_idle(5)
        await engine.aclose()
        return engine, len(words)

    engine, total = asyncio.run(scenario())
    starts = [r["t"] for r in engine.timeline.of_type("llm_request")]
    for index, start in enumerate(starts):
        assert sum(1 for s in starts[index:] if s < start + 2.0 - 1e-6) <= 5
    assert len(starts) >= 6  # the sixth waited for the window to free
    assert engine.timeline.of_type("llm_request")[-1]["user_words"] == total


def test_a_final_restarts_even_without_new_words():
    async def scenario():
        llm = ScriptedLLM(chunk_s=0.05)
        engine, _ = await make(llm)
        engine.on_transcript(partial("how many legs does a spider have"))
        await asyncio.sleep(0.1)
        engine.on_transcript(final("how many legs does a spider have"))
        assert await engine.wait_idle(5)
        await engine.aclose()
        return engine

    engine = asyncio.run(scenario())
    assert [r["reason"] for r in engine.timeline.of_type("llm_request")] == ["words", "final"]
    assert [c["reason"] for c in engine.timeline.of_type("oracle_cancel")] == ["restart"]


def test_parallel_mode_adopts_the_first_newer_token_and_cancels_older_streams():
    async def scenario():
        delays = {0: 1.0, 1: 0.1, 2: 0.05}
        llm = ScriptedLLM(
            lambda m: "reply to " + m[-1].content, first_token_s=lambda i: delays[i], chunk_s=0.02
        )
        policy = OraclePolicy(mode="parallel", parallel_interval_s=0.2, max_parallel=3)
        engine, events = await make(llm, policy=policy)
        engine.on_transcript(partial("tell me"))
        await asyncio.sleep(0.25)
        assert engine.running_streams == 1  # the slow first answer is still thinking
        engine.on_transcript(partial("tell me about the"))
        await asyncio.sleep(0.05)
        assert engine.running_streams == 2  # both run at once
        assert await engine.wait_idle(5)
        await engine.aclose()
        return engine, events, llm

    engine, events, llm = asyncio.run(scenario())
    streams = by_stream(events)
    assert sorted(streams) == [1]  # stream 0 never reached the front-end
    assert "".join(e.text for e in streams[1]) == "reply to tell me about the"
    assert [(c["stream"], c["reason"]) for c in engine.timeline.of_type("oracle_cancel")] == [
        (0, "superseded")
    ]
    assert llm.stopped == 1


def test_poll_mode_decides_on_its_ticks_only():
    async def scenario():
        engine, _ = await make(ScriptedLLM(), policy=OraclePolicy(poll_interval_s=0.5))
        start = engine.timeline.now()
        await asyncio.sleep(0.1)
        engine.on_transcript(partial("what is the time"))
        assert await engine.wait_idle(5)
        await engine.aclose()
        return engine, start

    engine, start = asyncio.run(scenario())
    request = engine.timeline.of_type("llm_request")[0]
    assert 0.45 <= request["t"] - start <= 0.7


def test_an_llm_error_is_recorded_and_the_engine_keeps_running():
    async def scenario():
        llm = ScriptedLLM("It is sunny.", fail_calls=(0,))
        engine, events = await make(llm, policy=OraclePolicy(error_backoff_s=0.2))
        engine.on_transcript(final("what is the weather"))
        await asyncio.sleep(0.3)
        assert engine.stats.errors == 1 and not events
        engine.on_transcript(final("what is the weather today"))
        assert await engine.wait_idle(5)
        await engine.aclose()
        return engine, events

    engine, events = asyncio.run(scenario())
    assert "failed on purpose (bad key)" in engine.last_error
    error = engine.timeline.of_type("error")[0]
    assert error["source"] == "scripted" and "bad key" in error["text"] and error["stream"] == 0
    assert "".join(e.text for e in events) == "It is sunny." and events[-1].kind == "end"


class FailingServer:
    """A real OpenAI-compatible HTTP server: answers 500 to the first ``failures`` requests."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.requests <= self.failures:
            body = {"error": {"message": "the server broke on purpose", "type": "server_error"}}
            return web.json_response(body, status=500)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in ["Bonjour", " from", " the", " server."]:
            chunk = {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.01)
        await response.write(b"data: [DONE]\n\n")
        return response


def test_an_erroring_server_gives_a_clear_error_and_the_engine_recovers():
    create_llm = pytest.importorskip("kame.backend.llm").create_llm

    async def scenario():
        server = FailingServer(failures=1)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", server.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        llm = create_llm(f"openai:test-model@http://127.0.0.1:{port}/v1", api_key="sk-test", retries=0)
        engine, events = await make(llm, policy=OraclePolicy(error_backoff_s=0.1))
        try:
            engine.on_transcript(final("hello there"))
            assert await engine.wait_idle(10)
            first_error = engine.last_error
            await asyncio.sleep(0.15)
            engine.on_transcript(final("hello again"))
            assert await engine.wait_idle(10)
        finally:
            await engine.aclose()
            await llm.aclose()
            await runner.cleanup()
        return engine, events, first_error

    engine, events, first_error = asyncio.run(scenario())
    assert first_error is not None and "broke on purpose" in first_error, first_error
    assert engine.stats.errors == 1
    assert "".join(e.text for e in events) == "Bonjour from the server."


def test_a_dead_server_is_reported_without_raising():
    create_llm = pytest.importorskip("kame.backend.llm").create_llm

    async def scenario():
        import socket

        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        llm = create_llm(f"openai:test-model@http://127.0.0.1:{port}/v1", api_key="sk-test", retries=0)
        engine, events = await make(llm)
        engine.on_transcript(final("anyone there"))
        assert await engine.wait_idle(10)
        await engine.aclose()
        await llm.aclose()
        return engine, events

    engine, events = asyncio.run(scenario())
    assert engine.stats.errors == 1 and not events
    assert engine.timeline.of_type("error")[0]["text"]


def test_answers_are_cut_at_max_words_and_unspeakable_symbols_dropped():
    async def scenario():
        llm = ScriptedLLM("**Paris** is `the` capital #1 of France, a city of many museums and cafes.")
        engine, events = await make(llm, max_words=6)
        engine.on_transcript(final("capital of france"))
        assert await engine.wait_idle(5)
        await engine.aclose()
        return engine, events, llm

    engine, events, llm = asyncio.run(scenario())
    text = "".join(e.text for e in events)
    assert text.strip() == "Paris is the capital 1 of"
    assert events[-1].kind == "end"
    assert engine.stats.truncated == 1 and llm.stopped == 1  # the stream was stopped, not drained


def test_the_prompt_holds_the_conversation_and_what_the_assistant_said():
    async def scenario(prompt_format):
        llm = ScriptedLLM("No, it is four.")
        engine, _ = await make(llm, prompt_format=prompt_format)
        engine.add_assistant_text("Hello, how can I help?")  # the assistant spoke first
        engine.on_transcript(final("what is two plus two"))
        await engine.wait_idle(5)
        engine.add_assistant_text("Two plus two")
        engine.add_assistant_text("is five.")
        engine.on_transcript(partial("are you sure", utterance=1))
        await engine.wait_idle(5)
        await engine.aclose()
        return llm.calls[-1]

    chat = asyncio.run(scenario("chat"))
    assert [(m.role, m.content) for m in chat[1:]] == [
        ("user", "what is two plus two"),
        ("assistant", "Two plus two is five."),
        ("user", "are you sure"),
    ]
    assert chat[0].role == "system" and "30 words" in chat[0].content
    transcript = asyncio.run(scenario("transcript"))
    assert len(transcript) == 2 and transcript[1].role == "user"
    assert transcript[1].content.endswith(
        "assistant: Hello, how can I help?\nuser: what is two plus two\n"
        "assistant: Two plus two is five.\nuser: are you sure"
    )


def test_the_transcript_queue_is_bounded_and_counts_drops():
    async def scenario():
        engine, _ = await make(ScriptedLLM(), max_queued_transcripts=4)
        words = []
        for index in range(9):  # no await: the engine cannot absorb any of them meanwhile
            words.append(f"w{index}")
            engine.on_transcript(partial(" ".join(words)))
            if index == 2:
                engine.on_transcript(final(" ".join(words)))
        queued = [t.kind for t in engine._queue]
        await engine.wait_idle(5)
        await engine.aclose()
        return engine, queued

    engine, queued = asyncio.run(scenario())
    assert engine.stats.dropped_transcripts == 6 and len(queued) == 4
    assert "final" in queued  # partials go first
    assert len(engine.timeline.of_type("transcript_dropped")) == 6


def test_a_failing_sink_is_recorded_and_the_engine_goes_on():
    async def scenario():
        engine = OracleEngine(ScriptedLLM("One two three."), lambda event: 1 / 0, session="t")
        await engine.start()
        engine.on_transcript(final("count to three"))
        await engine.wait_idle(5)
        engine.on_transcript(final("count again"))
        await engine.wait_idle(5)
        await engine.aclose()
        return engine

    engine = asyncio.run(scenario())
    assert engine.stats.sink_errors == engine.stats.events > 0
    assert engine.stats.completed == 2


def test_many_sessions_share_one_provider_without_mixing():
    async def scenario():
        llm = ScriptedLLM(lambda m: "about " + m[-1].content, chunk_s=0.01)
        engines = [await make(llm) for _ in range(4)]
        for index, (engine, _) in enumerate(engines):
            engine.on_transcript(final(f"topic {index}"))
        for engine, _ in engines:
            assert await engine.wait_idle(5)
            await engine.aclose()
        return engines

    for index, (_, events) in enumerate(asyncio.run(scenario())):
        assert "".join(e.text for e in events) == f"about topic {index}"


def test_system_prompt_default_file_and_errors(tmp_path):
    default = load_prompt()
    assert "30 words" in default and "correct" in default
    custom = tmp_path / "prompt.txt"
    custom.write_text("Answer in French.\n")
    assert OracleConfig(system_prompt_file=str(custom)).load_system_prompt() == "Answer in French."
    (tmp_path / "empty.txt").write_text(" \n")
    with pytest.raises(ValueError, match="empty"):
        OracleConfig(system_prompt_file=str(tmp_path / "empty.txt")).load_system_prompt()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OracleConfig(system_prompt_file=str(tmp_path / "missing.txt")).load_system_prompt()
    with pytest.raises(ValueError, match="mode"):
        OraclePolicy(mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="start"):
        OracleEngine(ScriptedLLM()).on_transcript(partial("too early"))


def test_the_engine_records_on_a_given_timeline(tmp_path):
    async def scenario():
        timeline = Timeline("s9", path=tmp_path / "t.jsonl")
        engine = OracleEngine(ScriptedLLM(), None, timeline=timeline)
        await engine.start()
        engine.on_transcript(final("hi"))
        await engine.wait_idle(5)
        await engine.aclose()
        timeline.close()
        return engine

    engine = asyncio.run(scenario())
    lines = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert {line["session"] for line in lines} == {"s9"}
    assert engine.session == "s9"
    assert "oracle_end" in [line["type"] for line in lines]


def test_the_local_llm_answers_a_question(local_llm):
    async def scenario():
        engine, events = await make(local_llm)
        engine.on_transcript(final("What is the capital of France?"))
        assert await engine.wait_idle(60)
        await engine.aclose()
        return engine, events

    engine, events = asyncio.run(scenario())
    answer = "".join(e.text for e in events)
    assert events[0].kind == "reset" and events[-1].kind == "end"
    assert "paris" in answer.lower(), answer
    assert len(answer.split()) <= 40
    ttft = engine.timeline.of_type("llm_first_token")[0]["ttft"]
    assert 0 < ttft < 10


@pytest.mark.parametrize("grace", [2.0, 0.0])
def test_new_words_wait_for_a_slow_first_token_unless_the_grace_is_off(grace):
    async def scenario():
        llm = ScriptedLLM(lambda m: "reply to " + m[-1].content, first_token_s=0.6, chunk_s=0.05)
        engine, events = await make(llm, policy=OraclePolicy(first_token_grace_s=grace))
        engine.on_transcript(partial("what is"))
        await asyncio.sleep(0.2)
        engine.on_transcript(partial("what is the capital"))
        assert await engine.wait_idle(5)
        await engine.aclose()
        return engine, events

    engine, events = asyncio.run(scenario())
    cancels = engine.timeline.of_type("oracle_cancel")
    first_tokens = engine.timeline.of_type("llm_first_token")
    if grace:
        # The first answer got its first token out, then made way for the newer words at once.
        assert [(c["stream"], c["had_tokens"]) for c in cancels] == [(0, True)]
        assert [f["stream"] for f in first_tokens] == [0, 1]
        request_1 = engine.timeline.of_type("llm_request")[1]
        assert 0 <= request_1["t"] - first_tokens[0]["t"] < 0.05
    else:
        # The released rule: cancelled before saying anything.
        assert [(c["stream"], c["had_tokens"]) for c in cancels] == [(0, False)]
        assert [f["stream"] for f in first_tokens] == [1]
    assert "".join(e.text for e in events if e.stream_id == 1) == "reply to what is the capital"
