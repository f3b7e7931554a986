"""``kame data build`` end to end: the embedded LLM and Piper make valid records; a failing LLM is reported
and skipped; a build killed mid-run resumes into exactly the dataset an uninterrupted build makes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_checks import QA, check_record
from sim_llm import app, serve_in_thread

from kame.data.build import BuildConfig, Builder, BuildError, build
from kame.data.dataset import read_records

FAILURES = "failures.jsonl"


def test_build_with_the_embedded_llm_and_piper(qa_file, tmp_path):
    """The main path: SmolLM2 (rewrite and simulator) and Piper, three dialogues."""
    out = tmp_path / "out"
    summary = build(BuildConfig(source=f"jsonl:{qa_file}", out=out, limit=3, workers=2), progress=False)
    assert summary["written"] == 3 and summary["failed"] == 0
    records = list(read_records(out))
    assert sorted(r.id for r in records) == ["qa-000000", "qa-000001", "qa-000002"]
    levels = set()
    for record in records:
        check_record(record)
        levels.update(e["level"] for e in record.meta["oracles"])
        written = QA[int(record.id[-1])]
        assert record.meta["written"] == written
    assert {0, 5} <= levels and len(levels) >= 3
    assert summary["audio_hours"] > 0 and sum(summary["oracle_events_per_level"].values()) > 6
    stored = json.loads((out / "build.json").read_text())
    assert stored["llm"] == "local" and stored["tts"] == "piper"


def test_inspect_json_lists_every_record(qa_file, tmp_path):
    out = tmp_path / "out"
    with serve_in_thread() as url:
        build(
            BuildConfig(source=f"jsonl:{qa_file}", out=out, limit=2, llm=f"openai:sim@{url}"), progress=False
        )
    result = subprocess.run(
        [sys.executable, "-m", "kame", "data", "inspect", str(out), "--json"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["id"] for r in lines) == ["qa-000000", "qa-000001"]
    for row in lines:
        assert {"id", "question", "answer", "user_words", "oracles"} <= set(row)
        assert all({"word", "start", "end"} <= set(w) for w in row["user_words"])
        assert all({"time", "level", "text"} <= set(e) for e in row["oracles"])
    text = subprocess.run(
        [sys.executable, "-m", "kame", "data", "inspect", str(out)], capture_output=True, text=True
    )
    assert "2 dialogues" in text.stdout and "oracle L5" in text.stdout


def test_failing_llm_is_reported_and_skipped(tmp_path):
    """A record whose LLM calls fail (HTTP 500 from a real server) is logged with its stage and skipped."""
    source = tmp_path / "qa.jsonl"
    rows = [QA[0], {"question": "FAILME please, what is this?", "answer": "Nothing at all."}, QA[1]]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"

    async def run() -> dict:
        from sim_llm import serve

        async with serve(app()) as root:
            config = BuildConfig(
                source=f"jsonl:{source}", out=out, llm=f"openai:sim@{root}/v1", llm_timeout=5.0
            )
            return await Builder(config, progress=False).run()

    summary = asyncio.run(run())
    assert summary["written"] == 2 and summary["failed"] == 1
    assert summary["failures_by_stage"] == {"rewrite": 1}
    failures = [json.loads(line) for line in (out / FAILURES).read_text().splitlines()]
    assert len(failures) == 1 and failures[0]["id"] == "qa-000001" and failures[0]["stage"] == "rewrite"
    assert "HTTP 500" in failures[0]["reason"] and "after 3 attempts" in failures[0]["reason"]
    assert sorted(r.id for r in read_records(out)) == ["qa-000000", "qa-000002"]
    for record in read_records(out):
        check_record(record)


def test_resume_refuses_other_settings(qa_file, tmp_path):
    out = tmp_path / "out"
    with serve_in_thread() as url:
        build(
            BuildConfig(source=f"jsonl:{qa_file}", out=out, limit=1, llm=f"openai:sim@{url}"), progress=False
        )
        with pytest.raises(BuildError, match="seed"):
            Builder(BuildConfig(source=f"jsonl:{qa_file}", out=out, seed=1, llm=f"openai:sim@{url}"))


def _command(source: Path, out: Path, llm: str, limit: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kame",
        "data",
        "build",
        "--source",
        f"jsonl:{source}",
        "--out",
        str(out),
        "--llm",
        llm,
        "--limit",
        str(limit),
        "--workers",
        "2",
        "--no-progress",
        "--per-shard",
        "4",
    ]


def _dataset(out: Path) -> dict[str, tuple[dict, np.ndarray, np.ndarray]]:
    return {r.id: (r.meta, r.user, r.assistant) for r in read_records(out)}


def _kill_after(command: list[str], out: Path, records: int, timeout: float) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if out.exists() and len(list(read_records(out, audio=False))) >= records:
                break
            if process.poll() is not None:
                raise AssertionError(f"the build ended before it could be killed: {process.stderr.read()}")
            time.sleep(0.05)
        else:
            raise AssertionError("the build wrote too few records in time")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def _resume_gives_the_same_dataset(
    tmp_path: Path, llm: str, limit: int, kill_after: int, timeout: float
) -> None:
    source = tmp_path / "qa.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in QA))
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run(_command(source, reference, llm, limit), check=True, capture_output=True)
    _kill_after(_command(source, resumed, llm, limit), resumed, kill_after, timeout)
    partial = _dataset(resumed)
    assert kill_after <= len(partial) < limit
    result = subprocess.run(_command(source, resumed, llm, limit), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads((resumed / "summary.json").read_text())  # nothing finished before the kill is redone
    assert summary["already_done"] == len(partial) and summary["written"] == limit - len(partial)
    expected, got = _dataset(reference), _dataset(resumed)
    assert sorted(got) == sorted(expected) == [f"qa-{i:06d}" for i in range(limit)]
    for key, (meta, user, assistant) in expected.items():
        assert got[key][0] == meta, key
        assert np.array_equal(got[key][1], user) and np.array_equal(got[key][2], assistant), key
    for record in read_records(resumed):
        check_record(record)


def test_killed_build_resumes_to_the_same_dataset(tmp_path):
    """SIGKILL a real ``kame data build`` after two records; the resumed build equals an uninterrupted one."""
    with serve_in_thread(delay=0.05) as url:
        _resume_gives_the_same_dataset(tmp_path, f"openai:sim@{url}", limit=6, kill_after=2, timeout=60)


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_dataset_with_the_embedded_llm(tmp_path):
    _resume_gives_the_same_dataset(tmp_path, "local", limit=4, kill_after=1, timeout=120)


def test_fast_build_without_any_llm(qa_file, tmp_path):
    """``--no-rewrite --oracles verbatim``: the written text is spoken as is and each user utterance gets
    only its level-5 oracle (the reply verbatim). No LLM is loaded: the spec points at a closed port, so
    one call would fail its record."""
    out = tmp_path / "out"
    command = _command(qa_file, out, "openai:none@http://127.0.0.1:9/v1", limit=len(QA))
    command += ["--tts", "espeak", "--no-rewrite", "--oracles", "verbatim"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["written"] == len(QA) and summary["failed"] == 0
    assert set(summary["oracle_events_per_level"]) == {"5"}
    records = sorted(read_records(out), key=lambda r: r.id)
    assert len(records) == len(QA)
    for record, written in zip(records, QA, strict=True):
        check_record(record)
        meta = record.meta
        assert meta["rewritten"] == [False, False] and meta["llm"] is None
        assert meta["question"] == written["question"] and meta["answer"] == written["answer"]
        assert [e["level"] for e in meta["oracles"]] == [5]  # one utterance: one oracle, after its last word
        assert meta["oracles"][0]["time"] >= meta["user_words"][-1]["end"]
    stored = json.loads((out / "build.json").read_text())
    assert stored["oracles"] == "verbatim" and stored["llm"] is None and stored["rewrite"] is False


def test_unknown_oracle_mode_is_refused(tmp_path):
    with pytest.raises(BuildError, match="--oracles 'all'"):
        BuildConfig(source="jsonl:x", out=tmp_path, oracles="all")
