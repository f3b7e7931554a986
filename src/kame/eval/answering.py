"""Asking: every system holds each question as a spoken conversation; each turn's reply is recorded.

A job is one system, one question, one run. Its turns are spoken by the question TTS (whose word times
give the exact end of the user's speech), the system answers them in one session, and each turn's
reply gets its transcript (Whisper on the reply audio, or the system's text stream), its words and its
response latency. The ``oracle-text`` rows come from the same ``kame`` conversation. ``workers``
threads each hold their own models and event loop, so sessions run side by side.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kame.audio.io import resample, write_wav
from kame.eval.latency import response_latency
from kame.eval.questions import Question
from kame.eval.systems import SYSTEMS, Conversation, SpokenSystem, SystemSettings, oracle_text
from kame.eval.transcript import ReplyTranscriber, TimedWord, join_words, words_in
from kame.events import LLMRoute, is_a
from kame.frames import SAMPLE_RATE

logger = logging.getLogger(__name__)


class SystemLoadError(RuntimeError):
    """A system's models could not be loaded (a bad spec, a missing file, a key); nothing can run."""


@dataclass(frozen=True)
class Job:
    system: str  # a name in SYSTEMS
    question: Question
    run: int

    @property
    def stem(self) -> str:
        return f"{self.question.question_id}-r{self.run}"


@dataclass
class SpokenQuestion:
    """A question's turns as 24 kHz audio, with each turn's word times (seconds from the clip start)."""

    audio: list[np.ndarray]
    words: list[list[TimedWord]]


def speak(tts: Any, question: Question) -> SpokenQuestion:
    audio, words = [], []
    for text in question.turns:
        speech = tts.synthesize(text)
        audio.append(resample(speech.audio, speech.sample_rate, SAMPLE_RATE))
        words.append([TimedWord(w.word, w.start, w.end) for w in speech.words])
    return SpokenQuestion(audio, words)


def turn_rows(
    job: Job,
    spoken: SpokenQuestion,
    conversation: Conversation,
    transcript: str,
    transcriber: ReplyTranscriber | None,
    files: dict[str, str],
    wall_s: float,
) -> list[dict[str, Any]]:
    """One answer row per turn."""
    rows = []
    starts = conversation.turn_starts
    for k, question_text in enumerate(job.question.turns):
        start = starts[k] if k < len(starts) else None
        base = {
            "system": job.system,
            "question_id": job.question.question_id,
            "category": job.question.category,
            "run": job.run,
            "turn": k + 1,
            "question": question_text,
        }
        if start is None:  # the session ended before this turn (cannot happen with the simulation's rules)
            raise RuntimeError(f"{job.system} {job.stem}: the conversation never reached turn {k + 1}")
        end = starts[k + 1] if k + 1 < len(starts) else None
        user_words = [TimedWord(w.text, start + w.start, start + w.end) for w in spoken.words[k]]
        user_end = user_words[-1].end if user_words else start + len(spoken.audio[k]) / SAMPLE_RATE
        user_first = user_words[0].start if user_words else start  # the reply: the first word after this
        if transcriber is not None:  # --transcript audio
            lo = int(start * SAMPLE_RATE)
            hi = None if end is None else int(end * SAMPLE_RATE)
            words = transcriber.words(conversation.reply_audio[lo:hi], offset=start)
        else:
            words = words_in(conversation.text_words, start, end)
        rows.append(
            {
                **base,
                "transcript": join_words(words),
                "transcript_source": transcript,
                "words": [w.to_json() for w in words],
                "turn_start": round(start, 3),
                "user_words": [w.to_json() for w in user_words],
                "user_end": round(user_end, 3),
                "latency": response_latency(user_end, [w.start for w in words if w.start >= user_first]),
                "routes": [
                    e.get("text")
                    for e in conversation.events
                    if is_a(e, LLMRoute)
                    and start <= e.get("audio_t", 0.0)
                    and (end is None or e.get("audio_t", 0.0) < end)
                ],
                **files,
                "wall_s": round(wall_s, 2),
            }
        )
    return rows


def derived_rows(
    name: str, source_rows: list[dict[str, Any]], events: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The rows of a derived system (``oracle-text``) from one conversation's rows and its timeline."""
    ordered = sorted(source_rows, key=lambda r: r["turn"])
    rows = []
    for k, row in enumerate(ordered):
        end = ordered[k + 1]["turn_start"] if k + 1 < len(ordered) else None
        text, source = oracle_text(events, row["turn_start"], end)
        rows.append(
            {
                **{
                    key: row[key]
                    for key in (
                        "question_id",
                        "category",
                        "run",
                        "turn",
                        "question",
                        "turn_start",
                        "user_words",
                        "user_end",
                        "timeline",
                        "wall_s",
                    )
                },
                "system": name,
                "transcript": text,
                "transcript_source": source,
                "words": [],
                "latency": None,
            }
        )
    return rows


class Answerer:
    """Runs the jobs on ``workers`` threads; ``on_rows`` receives each finished job's rows."""

    def __init__(
        self,
        settings: SystemSettings,
        out: Path,
        *,
        tts: str,
        transcript: str,
        whisper: str = "embedded",
        workers: int = 1,
    ) -> None:
        self.settings = settings
        self.out = out
        self.tts_spec = tts
        self.transcript = transcript
        self.workers = max(1, workers)
        self.transcriber = ReplyTranscriber(whisper, settings.device) if transcript == "audio" else None
        self.failures: list[tuple[Job, str]] = []
        self.fatal: SystemLoadError | None = None  # a system could not load: every worker stops
        self._lock = threading.Lock()

    def run(self, jobs: list[Job], on_rows: Callable[[Job, list[dict[str, Any]], list[dict]], None]) -> None:
        """``on_rows(job, rows, timeline events)`` runs on the worker thread as each job finishes."""
        todo: queue.Queue[Job] = queue.Queue()
        for job in jobs:
            todo.put(job)
        threads = [
            threading.Thread(target=self._worker, args=(todo, on_rows), name=f"kame-eval-{i}", daemon=True)
            for i in range(min(self.workers, len(jobs)))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.fatal is not None:
            raise self.fatal

    def _worker(self, todo: queue.Queue[Job], on_rows: Callable) -> None:
        asyncio.run(self._serve(todo, on_rows))

    async def _serve(self, todo: queue.Queue[Job], on_rows: Callable) -> None:
        from kame.audio.tts import create_tts

        tts = create_tts(self.tts_spec)
        systems: dict[str, SpokenSystem] = {}
        try:
            while True:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                if self.fatal is not None:
                    return
                if job.system not in systems:
                    try:
                        systems[job.system] = SYSTEMS[job.system](self.settings)
                        await systems[job.system].load()
                    except Exception as exc:  # noqa: BLE001 - a system that cannot load ends the run
                        with self._lock:
                            self.fatal = self.fatal or SystemLoadError(f"{job.system}: {exc}")
                        return
                try:
                    rows, events = await self._answer(job, systems[job.system], tts)
                except Exception as exc:  # noqa: BLE001 - one failed conversation must not stop the others
                    logger.exception("%s %s failed", job.system, job.stem)
                    with self._lock:
                        self.failures.append((job, f"{type(exc).__name__}: {exc}"))
                    continue
                on_rows(job, rows, events)
        finally:
            for system in systems.values():
                await system.aclose()

    async def _answer(
        self, job: Job, system: SpokenSystem, tts: Any
    ) -> tuple[list[dict[str, Any]], list[dict]]:
        spoken = await asyncio.to_thread(speak, tts, job.question)
        folder = self.out / "audio" / job.system
        timeline = self.out / "timelines" / job.system / f"{job.stem}.jsonl"
        started = time.perf_counter()
        conversation = await system.converse(spoken.audio, str(timeline))
        wall_s = time.perf_counter() - started
        reply, user = folder / f"{job.stem}.reply.wav", folder / f"{job.stem}.user.wav"
        write_wav(reply, conversation.reply_audio)
        write_wav(user, conversation.user_audio)
        files = {
            name: str(path.relative_to(self.out))
            for name, path in (("audio", reply), ("user_audio", user), ("timeline", timeline))
        }
        rows = await asyncio.to_thread(
            turn_rows, job, spoken, conversation, self.transcript, self.transcriber, files, wall_s
        )
        return rows, conversation.events
