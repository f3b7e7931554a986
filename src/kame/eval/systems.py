"""The spoken systems an evaluation can ask, by name, each holding a whole conversation by speech.

Every system gets the user's turns as audio and answers through the session code of ``kame simulate``
(``kame.runtime.simulate``): the first turn is spoken, the reply runs until it has been quiet for a
while (or hits a cap), then the next turn is spoken, so the reply to turn 2 hears the real history.

- ``kame``: the front-end with the back-end (streaming STT and the ``--llm`` oracles);
- ``moshi``: a front-end with no back-end and the oracle stream off, so plain Moshi weights compute
  exactly what stock Moshi computes;
- ``cascade``: the cascade pipeline (streaming STT, a turn detector, the ``--llm`` answer spoken by
  ``--reply-tts``) with the same back-end models;
- ``oracle-text`` is no session of its own: it reads the oracles of each ``kame`` conversation
  (``oracle_text``), the paper's "back-end text of the final oracle" row.

A new system registers a factory in ``SYSTEMS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kame.eval.transcript import TextStreamRecorder, TimedWord
from kame.events import OracleAppend, OracleEnd, OracleReset, is_a

DEFAULT_MOSHI = "hf://kyutai/moshiko-pytorch-bf16"


@dataclass
class SystemSettings:
    """What the systems are made of (the ``kame eval`` model flags)."""

    frontend: str = "hf://SakanaAI/kame"
    moshi_frontend: str = DEFAULT_MOSHI
    llm: str = "local"
    stt: str = "whisper"
    device: str = "cpu"
    lora: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)  # flags over the checkpoint's lm_gen_config
    oracle_policy: str = "restart"
    system_prompt: str | None = None
    reply_tts: str = "piper"  # the cascade's voice
    turn_silence_s: float = 0.6  # VAD silence that ends the user's turn in the cascade
    cascade_system_prompt: str | None = None
    realtime: bool = False
    max_reply_s: float = 30.0  # a reply is cut after this long past the end of the user's turn
    reply_silence_s: float = 2.0  # a reply has ended after this long without a word


@dataclass
class Conversation:
    """What one system did over one spoken conversation, on the input's clock."""

    reply_audio: np.ndarray  # 24 kHz, kame.frames' timing convention
    user_audio: np.ndarray
    turn_starts: list[float]  # seconds where each user turn began
    text_words: list[TimedWord]  # the system's own text stream
    events: list[dict[str, Any]]  # the session's timeline


class SpokenSystem(Protocol):
    name: str

    async def load(self) -> None:
        """Load the models (an error here is the run's, not one conversation's)."""

    async def converse(self, turns: list[np.ndarray], timeline_path: str | None = None) -> Conversation: ...

    async def aclose(self) -> None: ...


class FrontendSystem:
    """A front-end session, with or without the back-end; models load once and serve every question."""

    def __init__(self, name: str, frontend: str, settings: SystemSettings, *, with_backend: bool) -> None:
        self.name = name
        self.frontend_spec = frontend
        self.settings = settings
        self.with_backend = with_backend
        self._frontend: Any = None
        self._backend: Any = None

    async def load(self) -> None:
        s = self.settings
        if self.with_backend and self._backend is None:  # first: a bad LLM or STT spec fails at once
            from kame.backend.oracle_engine import OracleConfig, OraclePolicy
            from kame.runtime.backend import Backend, BackendSpec

            oracle = OracleConfig(
                policy=OraclePolicy(mode=s.oracle_policy), system_prompt_file=s.system_prompt
            )
            self._backend = Backend.from_spec(BackendSpec(stt=s.stt, llm=s.llm, oracle=oracle))
        if self._frontend is None:
            import torch

            from kame.frontend.checkpoint import load_frontend

            torch.set_grad_enabled(False)
            self._frontend = await asyncio.to_thread(
                load_frontend, self.frontend_spec, s.device, lora_weights=s.lora
            )
            if self._backend is not None:
                await self._backend.load()

    async def converse(self, turns: list[np.ndarray], timeline_path: str | None = None) -> Conversation:
        from kame.frontend.engine import FrontendEngine
        from kame.frontend.generator import SamplingConfig
        from kame.runtime.simulate import SimulationConfig, simulate

        await self.load()
        s = self.settings
        sampling = SamplingConfig.merged(self._frontend.lm_gen_config, **s.sampling)
        config = SimulationConfig(
            realtime=s.realtime, max_reply_s=s.max_reply_s, reply_silence_s=s.reply_silence_s
        )
        recorder = TextStreamRecorder()
        with FrontendEngine(self._frontend, 1, sampling, oracle_stream=self.with_backend) as engine:
            result = await simulate(
                engine,
                self._backend,
                turns,
                config,
                session_id=self.name,
                timeline_path=timeline_path,
                output=recorder,
            )
        return Conversation(
            result.audio, result.user_audio, result.turn_starts, recorder.words(), result.events
        )

    async def aclose(self) -> None:
        if self._backend is not None:
            await self._backend.aclose()
            self._backend = None


class CascadeSystem:
    """The cascade pipeline (STT -> LLM -> TTS, no front-end) with the same ``--llm`` and ``--stt``."""

    name = "cascade"

    def __init__(self, settings: SystemSettings) -> None:
        self.settings = settings
        self._cascade: Any = None

    async def load(self) -> None:
        if self._cascade is None:
            from kame.audio.tts import create_tts
            from kame.backend.llm import create_llm
            from kame.backend.stt import create_stt
            from kame.runtime.cascade.pipeline import Cascade, CascadeConfig

            s = self.settings
            config = CascadeConfig(
                turn_silence_s=s.turn_silence_s, system_prompt_file=s.cascade_system_prompt
            )
            self._cascade = Cascade(create_stt(s.stt), create_llm(s.llm), create_tts(s.reply_tts), config)
            await self._cascade.load()

    async def converse(self, turns: list[np.ndarray], timeline_path: str | None = None) -> Conversation:
        from kame.runtime.simulate import SimulationConfig, simulate_cascade

        await self.load()
        s = self.settings
        config = SimulationConfig(
            realtime=s.realtime, max_reply_s=s.max_reply_s, reply_silence_s=s.reply_silence_s
        )
        recorder = TextStreamRecorder(whole_words=True)  # the cascade sends each played word whole
        result = await simulate_cascade(
            self._cascade, turns, config, session_id=self.name, timeline_path=timeline_path, output=recorder
        )
        return Conversation(
            result.audio, result.user_audio, result.turn_starts, recorder.words(), result.events
        )

    async def aclose(self) -> None:
        if self._cascade is not None:
            await self._cascade.aclose()
            self._cascade = None


def _kame(settings: SystemSettings) -> SpokenSystem:
    return FrontendSystem("kame", settings.frontend, settings, with_backend=True)


def _moshi(settings: SystemSettings) -> SpokenSystem:
    return FrontendSystem("moshi", settings.moshi_frontend, settings, with_backend=False)


SYSTEMS: dict[str, Callable[[SystemSettings], SpokenSystem]] = {
    "kame": _kame,
    "moshi": _moshi,
    "cascade": CascadeSystem,
}
DERIVED = {"oracle-text": "kame"}  # judged from another system's conversations: its source


def system_names() -> tuple[str, ...]:
    return (*SYSTEMS, *DERIVED)


def oracle_text(events: list[dict[str, Any]], start: float, end: float | None) -> tuple[str, str]:
    """(text, where from) of the back-end's answer during one turn (timeline ``audio_t`` in [start, end)).

    The last complete oracle (the last ``oracle_end``), or, when none completed, the text the adopted
    stream had sent (its reset and appends); ``("", "none")`` when no oracle was sent at all.
    """
    window = [
        e for e in events if e.get("audio_t", 0.0) >= start and (end is None or e.get("audio_t", 0.0) < end)
    ]
    ends = [e for e in window if is_a(e, OracleEnd) and e.get("text")]
    if ends:
        return ends[-1]["text"], "oracle_end"
    last_reset = max((i for i, e in enumerate(window) if is_a(e, OracleReset)), default=None)
    if last_reset is None:
        return "", "none"
    stream = window[last_reset].get("stream")
    sent = [
        e.get("text", "")
        for e in window[last_reset:]
        if is_a(e, OracleReset, OracleAppend) and e.get("stream") == stream
    ]
    return "".join(sent).strip(), "adopted stream"
