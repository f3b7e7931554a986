"""The event vocabulary (``kame.events``): every declared type is documented, the web client handles
every wire type, the code names events by class (never a type string), and a real session of the
oracle engine emits nothing undeclared."""

from __future__ import annotations

import ast
import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import kame
from kame import events
from kame.backend.llm.base import ChatMessage, LLMError, LLMProvider
from kame.backend.oracle_engine import OracleConfig, OracleEngine
from kame.backend.stt.base import Transcript, Word
from kame.timeline import Timeline

PACKAGE = Path(kame.__file__).parent
ROOT = PACKAGE.parent.parent
README = (ROOT / "README.md").read_text()


def _table_types(section: str) -> set[str]:
    """The backticked names in the first column of the README tables under heading ``section``."""
    body = README.split(f"### {section}", 1)[1].split("\n#", 1)[0]
    names: set[str] = set()
    for line in body.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z_0-9]+)`", line.split("|")[1]))
    return names


def test_every_timeline_type_is_documented_and_nothing_else():
    documented = _table_types("Timeline format (JSON Lines)") - {"t", "audio_t", "session", "type", "text"}
    assert documented == set(events.TIMELINE_EVENTS)


def test_every_wire_type_is_documented_and_handled_by_the_web_client():
    assert _table_types("Wire events (0x04)") - {"type"} == set(events.wire_types())
    client = (PACKAGE / "server" / "static" / "app.js").read_text()
    handled = set(re.findall(r'case "([a-z_]+)":', client.split("function onEvent", 1)[1].split("\n}\n")[0]))
    assert handled == set(events.wire_types())


def _type_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants compared with an event's ``type`` (``event["type"] == "..."``, ``in (...)``)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        if not any(isinstance(s, ast.Subscript) and getattr(s.slice, "value", None) == "type" for s in sides):
            continue
        for side in sides:
            for constant in ast.walk(side):
                if isinstance(constant, ast.Constant) and constant.value in events.TIMELINE_EVENTS:
                    found.append((node.lineno, constant.value))
    return found


def test_code_names_events_by_class_not_by_string():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("events.py", "timeline.py"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(PACKAGE.parent)
        offenders += [f"{where}:{line}: compares a type with {text!r}" for line, text in _type_literals(tree)]
        for node in ast.walk(tree):  # every recorded event goes through ``Timeline.emit``
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "record":
                offenders.append(f"{where}:{node.lineno}: calls record(); emit a kame.events class")
    assert offenders == []


class _Answers(LLMProvider):
    """Answers every request after a short delay; the second request fails (a retryable error)."""

    name = "answers"

    def __init__(self) -> None:
        self.calls = 0

    async def stream_chat(self, messages, *, max_tokens=96, temperature=0.3) -> AsyncIterator[str]:
        self.calls += 1
        call = self.calls
        await asyncio.sleep(0.03)
        if call == 2:
            raise LLMError(self.name, "failed on purpose", retryable=True)
        for word in ("one two three four five six seven " * 3).split():
            yield word + " "
            await asyncio.sleep(0.005)


def _transcript(kind: str, text: str, audio_t: float) -> Transcript:
    words = tuple(Word(w, 0.1 * i, 0.1 * i + 0.08) for i, w in enumerate(text.split()))
    return Transcript(kind, text, words, 0, audio_t, stable=len(words) if kind == "final" else 0)  # type: ignore[arg-type]


def test_a_real_engine_session_emits_only_declared_events():
    timeline = Timeline("vocab", keep=None)
    timeline.add_audio(0.08)

    async def scenario() -> None:
        config = OracleConfig(max_words=6, max_queued_transcripts=2)
        engine = OracleEngine(_Answers(), lambda op: None, config=config, timeline=timeline)
        await engine.start()
        for index in range(5):  # no await between them: the queue drops the oldest partials
            engine.on_transcript(_transcript("partial", "what is the capital " * (index + 1), 0.5 + index))
        engine.on_transcript(_transcript("final", "what is the capital of france", 6.0))
        await engine.wait_idle(5)
        engine.add_assistant_text("Paris")
        engine.on_transcript(_transcript("final", "and of spain", 8.0))
        await asyncio.sleep(1.2)  # past the error backoff
        engine.on_transcript(_transcript("final", "and italy", 9.0))
        await engine.wait_idle(5)
        await engine.aclose()

    asyncio.run(scenario())
    seen = {event["type"] for event in timeline.events}
    assert seen <= set(events.TIMELINE_EVENTS), seen - set(events.TIMELINE_EVENTS)
    expected = {"audio", "partial", "final", "transcript_dropped", "llm_request", "llm_first_token"}
    expected |= {"oracle_reset", "oracle_append", "oracle_end", "llm_truncated", "assistant_text", "error"}
    assert expected <= seen, expected - seen


def test_live_events_carry_the_documented_fields():
    recorded = {"t": 1.0, "audio_t": 1.0, "session": "s", "type": "oracle_reset", "text": "Hi", "stream": 3}
    recorded |= {"covered": 0.5}
    assert events.LiveEvent(recorded, "Hi there").to_json() == {
        "type": "oracle_reset", "t": 1.0, "text": "Hi", "stream": 3, "oracle": "Hi there",
    }  # fmt: skip
    assert events.Queued(position=2).to_json() == {"type": "queued", "position": 2}
    assert events.MetricsUpdate(values={"frames": 3}).to_json() == {"type": "metrics", "frames": 3}
    assert ChatMessage("user", "x").role == "user"
