"""The back-end shared by all sessions of a process: one STT engine and one LLM provider.

Models are heavy and shared (Whisper weights, the local GGUF); what is per session (an STT stream, an
oracle engine) is opened for each session from here. Specs are the strings users pass on the command
line (``--stt whisper``, ``--llm local``), so the back-end can be swapped at run time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from kame.backend.llm import DEFAULT_LLM, ChatMessage, LLMError, LLMProvider, create_llm
from kame.backend.oracle_engine import OracleConfig, OracleEngine
from kame.backend.stt import DEFAULT_STT, STTEngine, STTStream, create_stt
from kame.events import LLMRoute
from kame.oracle import OracleSink
from kame.timeline import Timeline

logger = logging.getLogger(__name__)


@dataclass
class BackendSpec:
    stt: str = DEFAULT_STT
    llm: str = DEFAULT_LLM
    oracle: OracleConfig = field(default_factory=OracleConfig)


@dataclass
class SessionBackend:
    """One session's STT stream and oracle engine, and the task that feeds one into the other."""

    stream: STTStream
    engine: OracleEngine
    feeder: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.stream.start()
        await self.engine.start()
        self.feeder = asyncio.create_task(
            self.engine.run(self.stream), name=f"kame-stt-{self.stream.session}"
        )

    def busy(self) -> bool:
        """Work is pending: audio not decoded yet, or an answer still streaming."""
        return self.stream.backlog_s > 0.0 or self.engine.busy

    async def aclose(self) -> None:
        await self.engine.aclose()
        await self.stream.aclose()
        if self.feeder is not None:
            self.feeder.cancel()
            try:
                await self.feeder
            except (asyncio.CancelledError, Exception):
                pass


class Backend:
    """Shared models plus a factory of per-session back-ends."""

    def __init__(self, stt: STTEngine, llm: LLMProvider, oracle: OracleConfig | None = None) -> None:
        self.stt = stt
        self.llm = llm
        self.oracle = oracle or OracleConfig()

    @classmethod
    def from_spec(cls, spec: BackendSpec) -> Backend:
        return cls(create_stt(spec.stt), create_llm(spec.llm), spec.oracle)

    async def load(self) -> LLMError | None:
        """Load the models now rather than on the first session, and warm the LLM up with one tiny
        request (so that the first real one does not pay for loading it). Returns the LLM's failure,
        if it failed: sessions will keep trying."""
        await self.stt.load()
        try:
            await self.llm.complete([ChatMessage("user", "Say OK.")], max_tokens=1)
        except LLMError as exc:
            logger.warning("the LLM did not answer a warm-up request: %s (sessions will keep trying)", exc)
            return exc
        return None

    def open_session(self, session: str, timeline: Timeline, sink: OracleSink | None) -> SessionBackend:
        stream = self.stt.open_stream(session)
        llm = self.llm.bind(lambda text, **fields: timeline.emit(LLMRoute(text=text, **fields)))
        engine = OracleEngine(llm, sink, config=self.oracle, timeline=timeline, session=session)
        return SessionBackend(stream, engine)

    async def aclose(self) -> None:
        await self.llm.aclose()
        await self.stt.aclose()
