"""``kame eval mtbench``: the paper's speech MT-Bench table for any set of systems, resumable.

Three stages, each skipping what an earlier run of the same command already wrote to the folder:
asking (spoken conversations, ``answers.jsonl``), judging (``judgments.jsonl``), then the summary
(``results.json``) and ``report.html``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kame.backend.llm import LLMError
from kame.errors import UserError
from kame.eval.answering import Answerer, Job, SystemLoadError, derived_rows
from kame.eval.judge import Judge, load_prompts
from kame.eval.judging import answers_by_conversation, judge_all, judgment_key
from kame.eval.questions import PAPER_CATEGORIES, Question, load_questions
from kame.eval.report import write_report
from kame.eval.results import build_results
from kame.eval.store import RecordFile, check_settings, whole_groups
from kame.eval.systems import DERIVED, SYSTEMS, SystemSettings, system_names
from kame.eval.transcript import TRANSCRIPT_SOURCES
from kame.timeline import read_jsonl

logger = logging.getLogger(__name__)

# Settings that decide what the answers and judgments are; a rerun must match them. (Another --judge may
# judge the same answers: each judgment names its judge, and the results count the current one's.)
BINDING = (
    "frontend",
    "moshi_frontend",
    "llm",
    "stt",
    "tts",
    "transcript",
    "whisper",
    "judge_prompts",
    "sampling",
    "realtime",
    "max_reply_s",
    "reply_silence_s",
    "oracle_policy",
    "system_prompt",
    "lora",
)


class EvalError(UserError, ValueError):
    """An evaluation that cannot run as asked; the message says what to change."""


@dataclass
class MTBenchConfig:
    out: Path
    systems: list[str] = field(default_factory=lambda: ["kame", "moshi", "cascade", "oracle-text"])
    questions: str = "mtbench"
    categories: list[str] | None = None  # None: the paper's three for mtbench, every category of a file
    limit: int | None = None  # questions per category
    judge: str = "local"
    judge_prompts: str = "mtbench"
    judge_attempts: int = 3
    tts: str = "piper"
    transcript: str = "audio"
    whisper: str = "embedded"
    runs: int = 1
    workers: int = 1
    progress: bool = True
    models: SystemSettings = field(default_factory=SystemSettings)


@dataclass
class MTBenchOutcome:
    results: dict[str, Any]
    failures: list[tuple[str, str]]  # (what, why) of conversations that failed (rerun to retry)
    files: dict[str, Path]


def _validate(config: MTBenchConfig) -> None:
    unknown = [s for s in config.systems if s not in system_names()]
    if unknown or not config.systems:
        raise EvalError(
            f"unknown system(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(system_names())}"
        )
    for name, source in DERIVED.items():
        if name in config.systems and source not in config.systems:
            raise EvalError(
                f"{name} is read from the {source} system's conversations: add {source} to --systems"
            )
    if config.transcript not in TRANSCRIPT_SOURCES:
        raise EvalError(
            f"--transcript must be one of {', '.join(TRANSCRIPT_SOURCES)}, not {config.transcript!r}"
        )
    if config.runs < 1 or config.workers < 1:
        raise EvalError("--runs and --workers must be 1 or more")


def _settings(config: MTBenchConfig) -> dict[str, Any]:
    models = asdict(config.models)
    models.pop("device")
    return {
        **models,
        "tts": config.tts,
        "transcript": config.transcript,
        "whisper": config.whisper if config.transcript == "audio" else None,
        "judge": config.judge,
        "judge_prompts": config.judge_prompts,
        "judge_attempts": config.judge_attempts,
        "questions": config.questions,
        "categories": config.categories,
        "limit": config.limit,
        "runs": config.runs,
        "systems": config.systems,
        "device": config.models.device,
        "workers": config.workers,
    }


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="conv" if desc == "asking" else "judgment", disable=not enabled)


def run_mtbench(config: MTBenchConfig) -> MTBenchOutcome:
    _validate(config)
    out = Path(config.out)
    categories = config.categories
    if categories is None and config.questions == "mtbench":
        categories = list(PAPER_CATEGORIES)
    questions = load_questions(config.questions, categories, config.limit)
    categories = categories or sorted(
        {q.category for q in questions},
        key=lambda c: (PAPER_CATEGORIES.index(c) if c in PAPER_CATEGORIES else len(PAPER_CATEGORIES), c),
    )  # the paper's columns first, in its order
    prompts = load_prompts(config.judge_prompts)
    try:  # a bad --judge fails now, not after the answers
        asyncio.run(Judge(config.judge, prompts).aclose())
    except LLMError as exc:
        raise EvalError(f"--judge {config.judge}: {exc}") from exc
    settings = _settings(config)
    check_settings(out / "settings.json", settings, BINDING)
    by_id = {str(q.question_id): q for q in questions}

    answers = RecordFile(out / "answers.jsonl")
    answers.load(
        whole_groups(
            lambda r: (r["system"], str(r["question_id"]), r["run"]),
            lambda r: len(by_id[str(r["question_id"])].turns) if str(r["question_id"]) in by_id else 1,
        )
    )
    judgments = RecordFile(out / "judgments.jsonl")
    judgments.load(whole_groups(judgment_key, lambda r: 1))

    spoken = [s for s in config.systems if s in SYSTEMS]
    done = {(r["system"], str(r["question_id"]), r["run"]) for r in answers.records}
    jobs = [
        Job(s, q, run)
        for s in spoken
        for run in range(config.runs)
        for q in questions
        if (s, str(q.question_id), run) not in done
    ]
    derived = [d for d in config.systems if d in DERIVED]
    failures: list[tuple[str, str]] = []
    if jobs:
        bar = _bar(len(jobs), "asking", config.progress)
        lock = threading.Lock()

        def on_rows(job: Job, rows: list[dict], events: list[dict]) -> None:
            extra = [
                row
                for name in derived
                if DERIVED[name] == job.system
                for row in derived_rows(name, rows, events)
            ]
            answers.append(rows + extra)
            with lock:
                bar.update()

        answerer = Answerer(
            config.models,
            out,
            tts=config.tts,
            transcript=config.transcript,
            whisper=config.whisper,
            workers=config.workers,
        )
        try:
            answerer.run(jobs, on_rows)
        except SystemLoadError as exc:
            raise EvalError(f"cannot run {exc}") from exc
        finally:
            bar.close()
        failures = [
            (f"{job.system} question {job.question.question_id} run {job.run}", why)
            for job, why in answerer.failures
        ]
    _fill_derived(out, answers, derived)

    judge_tasks = _judge_tasks(config, questions, answers.records, judgments.records)
    if judge_tasks:
        _judge(config, prompts, judge_tasks, answers.records, judgments)

    asked = [r for r in answers.records if str(r["question_id"]) in by_id and r["run"] < config.runs]
    judged = [
        j
        for j in judgments.records
        if str(j["question_id"]) in by_id and j["run"] < config.runs and j["judge"] == config.judge
    ]
    results = build_results(config.systems, asked, judged, categories, settings)
    files = {
        "answers": answers.path,
        "judgments": judgments.path,
        "results": out / "results.json",
        "report": out / "report.html",
    }
    import json

    files["results"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_report(files["report"], results, asked, judged, report_notes(config, failures))
    return MTBenchOutcome(results, failures, files)


def _fill_derived(out: Path, answers: RecordFile, derived: list[str]) -> None:
    """Derived rows for conversations answered before the derived system was asked for (from timelines)."""
    have = {(r["system"], str(r["question_id"]), r["run"]) for r in answers.records}
    for name in derived:
        source = DERIVED[name]
        groups: dict[tuple[str, int], list[dict]] = {}
        for r in answers.records:
            if r["system"] == source and (name, str(r["question_id"]), r["run"]) not in have:
                groups.setdefault((str(r["question_id"]), r["run"]), []).append(r)
        for rows in groups.values():
            timeline = out / rows[0]["timeline"]
            if timeline.is_file():
                answers.append(derived_rows(name, rows, read_jsonl(timeline)))
            else:
                logger.warning("%s: no timeline, so no %s rows for it", timeline, name)


def _judge_tasks(
    config: MTBenchConfig, questions: list[Question], answers: list[dict], judged: list[dict]
) -> list:
    present = {(r["system"], str(r["question_id"]), r["run"]) for r in answers}
    done = {judgment_key(j) for j in judged if j["judge"] == config.judge}
    return [
        (s, q, run, turn)
        for s in config.systems
        for q in questions
        for run in range(config.runs)
        for turn in range(1, min(2, len(q.turns)) + 1)
        if (s, str(q.question_id), run) in present and (s, str(q.question_id), run, turn) not in done
    ]


def _judge(
    config: MTBenchConfig, prompts: dict, tasks: list, answers: list[dict], judgments: RecordFile
) -> None:
    bar = _bar(len(tasks), "judging", config.progress)

    def on_judgment(record: dict) -> None:
        judgments.append([record])
        bar.update()

    async def run() -> None:
        judge = Judge(config.judge, prompts, attempts=config.judge_attempts)
        try:
            await judge_all(judge, tasks, answers_by_conversation(answers), on_judgment, config.workers)
        finally:
            await judge.aclose()

    try:
        asyncio.run(run())
    finally:
        bar.close()


def report_notes(config: MTBenchConfig, failures: list[tuple[str, str]]) -> list[str]:
    notes = []
    if config.transcript == "audio":
        notes.append(
            f"What each reply said: its audio transcribed by Whisper ({config.whisper}) with word times, "
            "as a listener heard it."
        )
    else:
        notes.append(
            "What each reply said: each system's own text stream (--transcript text), not its audio; "
            "word times from the frame that produced each word."
        )
    if config.judge == "local" or config.judge.startswith("local:"):
        notes.append(
            "The judge is an embedded llama.cpp model constrained to answer 'Rating: [[N]]': it always "
            "returns a number, but with the default 135M model its scores mean little. Pass --judge "
            "openai:gpt-4.1 (or any strong model) for scores comparable with the paper."
        )
    if "tiny" in (config.models.frontend, config.models.moshi_frontend):
        notes.append(
            "A front-end is the tiny CPU checkpoint: its words follow its oracles only loosely and its voice "
            "is noise, so these figures test the plumbing, not a model."
        )
    notes.append(
        f"Judged with FastChat's prompts ({config.judge_prompts}) by {config.judge} at temperature 0, "
        f"{config.runs} run(s) averaged; -1 (no rating after {config.judge_attempts} attempts) is left out."
    )
    for what, why in failures:
        notes.append(f"FAILED (rerun to retry): {what}: {why}")
    return notes
