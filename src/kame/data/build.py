"""``kame data build``: turn a Q&A source into spoken, oracle-annotated dialogues, resumably.

For each source record (those of shard I of N, up to a limit): the written turns are rewritten as speech
by the LLM (``rewrite``), spoken by the TTS with word times (``speech``), the simulated oracles are
scheduled and written (``oracles``), and the record is appended to the dataset (``write``). With
``rewrite=False`` and ``oracles="verbatim"`` (only the level-5 oracle of each user utterance: the
ground-truth reply, once every word is heard) no LLM is loaded or called, so a build runs at TTS speed. Up to
``workers`` records are in flight at once and their LLM calls run concurrently (at most
``llm_concurrency`` at a time). Records already in the folder are not redone; a record that fails is
logged in ``failures.jsonl`` with its stage and reason and skipped. Everything random is drawn from a
generator seeded by (seed, record id), so a record's content does not depend on order, concurrency or
interruptions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kame.audio.io import load_audio
from kame.audio.tts import Speech, TTSEngine, TTSError, create_tts
from kame.backend.llm import LLMError, LLMProvider, create_llm
from kame.data.align import AlignmentError
from kame.data.dataset import SCHEMA, ShardWriter
from kame.data.oracles import VERBATIM, ScheduleConfig, schedule, simulate
from kame.data.prompts import PromptSet, load_prompts
from kame.data.sources import SourceRecord, open_source
from kame.data.speech import DialogueAudio, VoiceConfig, render_dialogue, words_json
from kame.data.text import contains_answer, keeps_content, leaks_answer, spoken
from kame.errors import UserError
from kame.frames import SAMPLE_RATE

logger = logging.getLogger(__name__)

SETTINGS_FILE = "build.json"
FAILURES_FILE = "failures.jsonl"
SUMMARY_FILE = "summary.json"


ORACLE_MODES = ("simulated", "verbatim")


class BuildError(UserError, ValueError):
    """Settings that cannot build this dataset (e.g. resuming with other settings); says what to change."""


@dataclass
class BuildConfig:
    source: str
    out: Path
    llm: str = "local"
    tts: str = "piper"
    assistant_tts: str | None = None  # default: the same engine as the user
    columns: str | None = None
    limit: int | None = None
    part: int = 0
    parts: int = 1
    workers: int = 2
    llm_concurrency: int = 4
    seed: int = 0
    rewrite: bool = True
    oracles: str = "simulated"  # or "verbatim": level-5 events only (the reply verbatim), no simulator
    prompts: str | None = None
    temperature: float = 0.7
    max_question_words: int = 80
    max_answer_words: int = 60
    per_shard: int = 256
    llm_timeout: float = 60.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    voice: VoiceConfig = field(default_factory=VoiceConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.part < self.parts:
            raise BuildError(f"--shard {self.part}/{self.parts}: write I/N with 0 <= I < N")
        if self.workers < 1 or self.llm_concurrency < 1:
            raise BuildError("--workers and the LLM concurrency must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise BuildError(f"--limit must be positive, got {self.limit}")
        if self.oracles not in ORACLE_MODES:
            raise BuildError(f"--oracles {self.oracles!r}: choose one of {', '.join(ORACLE_MODES)}")

    @property
    def uses_llm(self) -> bool:
        """Whether anything asks the LLM: the rewrite, or oracles below level 5."""
        return self.rewrite or self.oracles == "simulated"

    def identity(self, prompts: PromptSet) -> dict[str, Any]:
        """The settings that decide the dataset's content (a resumed build must match them)."""
        identity: dict[str, Any] = {
            "schema": SCHEMA,
            "source": self.source,
            "columns": self.columns,
            "llm": self.llm if self.uses_llm else None,
            "tts": self.tts,
            "assistant_tts": self.assistant_tts,
            "seed": self.seed,
            "rewrite": self.rewrite,
            "prompts": prompts.fingerprint,
            "temperature": self.temperature,
            "max_question_words": self.max_question_words,
            "max_answer_words": self.max_answer_words,
            "shards": f"{self.parts}",
            "per_shard": self.per_shard,
            "schedule": asdict(self.schedule),
            "voice": asdict(self.voice),
        }
        if self.oracles != "simulated":  # absent by default, so datasets built before the option resume
            identity["oracles"] = self.oracles
        return identity


@dataclass
class Failure(Exception):
    stage: str
    reason: str


@dataclass
class RunStats:
    written: int = 0
    skipped_done: int = 0
    failed: int = 0
    audio_s: float = 0.0
    levels: Counter = field(default_factory=Counter)
    empty_oracles: int = 0
    failures_by_stage: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def summary(self, total_in_dataset: int) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        return {
            "written": self.written,
            "already_done": self.skipped_done,
            "failed": self.failed,
            "failures_by_stage": dict(self.failures_by_stage),
            "records_in_dataset_part": total_in_dataset,
            "audio_hours": round(self.audio_s / 3600, 4),
            "oracle_events_per_level": {str(k): self.levels[k] for k in sorted(self.levels)},
            "empty_oracles_dropped": self.empty_oracles,
            "elapsed_s": round(elapsed, 1),
            "dialogues_per_minute": round(60 * self.written / elapsed, 2) if elapsed > 0 else 0.0,
            "audio_hours_per_hour": round(self.audio_s / elapsed, 3) if elapsed > 0 else 0.0,
        }


class Builder:
    """One build run; ``run()`` returns the summary."""

    def __init__(
        self,
        config: BuildConfig,
        *,
        llm: LLMProvider | None = None,
        engines: dict[str, TTSEngine] | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.prompts = load_prompts(config.prompts)
        self._check_settings()
        # every prompt read from scratch: a record's oracles must not depend on what was asked before it
        self.llm: LLMProvider | None = llm
        if llm is None and config.uses_llm:
            self.llm = create_llm(
                config.llm, seed=config.seed, timeout=config.llm_timeout, reuse_prompt=False
            )
        if engines is None:
            user = create_tts(config.tts)
            assistant = create_tts(config.assistant_tts) if config.assistant_tts else user
            engines = {"user": user, "assistant": assistant}
        self.engines = engines
        self.writer = ShardWriter(config.out, config.part, config.parts, config.per_shard)
        self.progress = progress
        self.stats = RunStats()
        self._aligner = None
        self._write_lock = asyncio.Lock()
        self._llm_limit = asyncio.Semaphore(config.llm_concurrency)

    def _check_settings(self) -> None:
        out = self.config.out
        out.mkdir(parents=True, exist_ok=True)
        path = out / SETTINGS_FILE
        wanted = json.loads(json.dumps(self.config.identity(self.prompts)))  # tuples compare as JSON lists
        if path.is_file():
            stored = json.loads(path.read_text())
            changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
            if changed:
                raise BuildError(
                    f"{out} was built with other settings ({', '.join(changed)}); resume with the same "
                    "settings or build into a new --out folder"
                )
        else:
            path.write_text(json.dumps(wanted, indent=2) + "\n")

    # --- one record ------------------------------------------------------------------------------

    def aligner(self, audio, rate: int, text: str):  # type: ignore[no-untyped-def]
        if self._aligner is None:
            from kame.data.align import WhisperAligner

            self._aligner = WhisperAligner()
        return self._aligner.align(audio, rate, text)

    async def _ask(self, prompt: str, max_tokens: int, **values: str) -> str:
        messages = self.prompts[prompt].render(**values)
        async with self._llm_limit:
            return await self.llm.complete(
                messages, max_tokens=max_tokens, temperature=self.config.temperature
            )

    async def spoken_turns(self, record: SourceRecord) -> tuple[list[tuple[str, str]], list[bool]]:
        """The record's turns as a person would say them, and which of them kept the LLM's rewrite.

        A rewrite that loses the written turn's content (under half of its keywords), or a question that
        gives away its answer, is replaced by the cleaned written text, so a weak rewriter cannot change
        the ground truth.
        """
        config = self.config
        turns: list[tuple[str, str]] = []
        rewritten: list[bool] = []
        for i, turn in enumerate(record.turns):
            is_user = turn.speaker == "user"
            limit = config.max_question_words if is_user else config.max_answer_words
            final = record.final if i == 1 else None
            plain = spoken(turn.text, max_words=limit)
            text, used = plain, False
            recorded = str(i) in (record.meta.get("audio") or {})  # a recording says its transcript as is
            if config.rewrite and not recorded:
                if is_user:
                    raw = await self._ask("spoken_question", 160, question=turn.text)
                else:
                    raw = await self._ask(
                        "spoken_answer",
                        120,
                        question=record.turns[i - 1].text,
                        answer=turn.text,
                        final=final or "(as written)",
                    )
                candidate = spoken(raw, max_words=limit)
                reply = record.turns[i + 1].text if is_user and i + 1 < len(record.turns) else ""
                leaked = leaks_answer(turn.text, reply, candidate)
                faithful = keeps_content(turn.text, candidate) and not leaked
                if faithful and (not final or contains_answer(candidate, final)):
                    text, used = candidate, True
            if is_user and text.endswith("."):
                text = text[:-1] + "?"
            if final and not contains_answer(text, final):
                text = f"{text} The answer is {spoken(final).rstrip('.')}."
            if not text.strip(" .?"):
                raise Failure("rewrite", f"turn {i} ({turn.speaker}) has no words to speak")
            turns.append((turn.speaker, text))
            rewritten.append(used)
        return turns, rewritten

    def _recordings(self, record: SourceRecord) -> dict[int, Speech]:
        recordings = {}
        for turn, path in (record.meta.get("audio") or {}).items():
            recordings[int(turn)] = Speech(load_audio(path), SAMPLE_RATE, words=[])
        return recordings

    async def make(self, record: SourceRecord, index: int) -> tuple[dict[str, Any], DialogueAudio]:
        config = self.config
        rng = random.Random(f"{config.seed}:{record.id}")
        try:
            turns, rewritten = await self.spoken_turns(record)
        except LLMError as exc:
            raise Failure("rewrite", str(exc)) from exc
        try:
            dialogue = await asyncio.to_thread(
                render_dialogue,
                turns,
                self.engines,
                random.Random(rng.random()),
                config.voice,
                self.aligner,
                self._recordings(record),
            )
        except (TTSError, AlignmentError, ValueError, OSError) as exc:
            raise Failure("speech", f"{type(exc).__name__}: {exc}") from exc
        user_turns = [
            (i, t.words) for i, t in enumerate(dialogue.turns) if t.speaker == "user" and i + 1 < len(turns)
        ]
        plans = schedule(user_turns, config.schedule)
        if config.oracles == "verbatim":
            plans = [p for p in plans if p.level == VERBATIM]
        try:
            events, empty = await simulate(
                plans,
                turns,
                self.llm,
                self.prompts,
                random.Random(rng.random()),
                temperature=config.temperature,
                limit=self._llm_limit,
            )
        except LLMError as exc:
            raise Failure("oracles", str(exc)) from exc
        self.stats.empty_oracles += empty
        meta = {
            "schema": SCHEMA,
            "id": record.id,
            "source": {"spec": config.source, "index": index, **record.meta},
            "question": turns[0][1],
            "answer": turns[1][1] if len(turns) > 1 else "",
            "written": {"question": record.question, "answer": record.answer},
            "rewritten": rewritten,
            "final": record.final,
            "sample_rate": dialogue.sample_rate,
            "duration": round(dialogue.duration, 4),
            "turns": [t.to_json() for t in dialogue.turns],
            "user_words": [words_json(w) for t in dialogue.turns if t.speaker == "user" for w in t.words],
            "assistant_words": [
                words_json(w) for t in dialogue.turns if t.speaker == "assistant" for w in t.words
            ],
            "oracles": [e.to_json() for e in events],
            "seed": config.seed,
            "tts": config.tts,
            "llm": config.llm if config.uses_llm else None,
        }
        return meta, dialogue

    # --- the run ---------------------------------------------------------------------------------

    def _fail(self, record_id: str, index: int, failure: Failure) -> None:
        self.stats.failed += 1
        self.stats.failures_by_stage[failure.stage] += 1
        line = {"id": record_id, "index": index, "stage": failure.stage, "reason": failure.reason}
        with (self.config.out / FAILURES_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        logger.warning("record %s failed at %s: %s", record_id, failure.stage, failure.reason)

    async def _one(self, record: SourceRecord, index: int, local: int, bar) -> None:  # type: ignore[no-untyped-def]
        try:
            meta, dialogue = await self.make(record, index)
            async with self._write_lock:
                await asyncio.to_thread(self.writer.write, local, meta, dialogue.user, dialogue.assistant)
            self.stats.written += 1
            self.stats.audio_s += dialogue.duration
            self.stats.levels.update(e["level"] for e in meta["oracles"])
        except Failure as failure:
            self._fail(record.id, index, failure)
        except Exception as exc:  # noqa: BLE001 - one bad record must not end the build
            logger.exception("record %s failed unexpectedly", record.id)
            self._fail(record.id, index, Failure("internal", f"{type(exc).__name__}: {exc}"))
        finally:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ok=self.stats.written, failed=self.stats.failed)

    async def run(self) -> dict[str, Any]:
        config = self.config
        slots = asyncio.Semaphore(config.workers)
        total = None
        if config.limit is not None:
            total = len(range(config.part, config.limit, config.parts))
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=f"kame data build {config.part}/{config.parts}", unit="dialogue")
        tasks: set[asyncio.Task] = set()
        seen: set[str] = set()
        try:
            for index, record in enumerate(open_source(config.source, config.columns)):
                if config.limit is not None and index >= config.limit:
                    break
                if index % config.parts != config.part:
                    continue
                local = index // config.parts
                if record.id in self.writer.done:
                    self.stats.skipped_done += 1
                    if bar is not None:
                        bar.update(1)
                    continue
                if record.id in seen:
                    self._fail(record.id, index, Failure("source", "duplicate record id"))
                    continue
                seen.add(record.id)
                await slots.acquire()
                task = asyncio.create_task(self._one(record, index, local, bar))
                tasks.add(task)
                task.add_done_callback(lambda t: (tasks.discard(t), slots.release()))
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            if bar is not None:
                bar.close()
            if self.llm is not None:
                await self.llm.aclose()
        summary = self.stats.summary(len(self.writer.done))
        (config.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def build(config: BuildConfig, **kwargs: Any) -> dict[str, Any]:
    """Run a build to the end (or the first Ctrl-C) and return its summary."""
    return asyncio.run(Builder(config, **kwargs).run())
