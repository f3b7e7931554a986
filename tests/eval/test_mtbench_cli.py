"""``kame eval mtbench`` end to end, offline: embedded STT, LLM and judge, the tiny front-end, text
transcripts; every output file, and a run killed midway that resumes without redoing finished work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NO_TORCH_COMPILE": "1"}


def command(out: Path, questions: Path, prompts: Path, checkpoint: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kame",
        "eval",
        "mtbench",
        "--out",
        str(out),
        "--questions",
        str(questions),
        "--judge-prompts",
        str(prompts),
        "--frontend",
        checkpoint,
        "--moshi-frontend",
        checkpoint,
        "--transcript",
        "text",
        "--max-reply",
        "2",
        "--no-progress",
        *extra,
    ]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_every_file(
    out: Path, systems: tuple[str, ...], questions: tuple[int, ...], categories: set[str]
) -> None:
    answers = lines(out / "answers.jsonl")
    assert {(a["system"], a["question_id"], a["turn"]) for a in answers} == {
        (s, q, t) for s in systems for q in questions for t in (1, 2)
    }
    for a in answers:
        if a["system"] == "oracle-text":
            assert a["latency"] is None and a["transcript_source"] in ("oracle_end", "adopted stream", "none")
            continue
        assert (out / a["audio"]).is_file() and (out / a["timeline"]).is_file()
        assert a["transcript_source"] == "text" and a["user_words"] and a["user_end"] > a["turn_start"]
        first_word = min((w[1] for w in a["words"] if w[1] >= a["user_words"][0][1]), default=None)
        assert a["latency"] == (None if first_word is None else round(first_word - a["user_end"], 3))
        assert a["transcript"] == " ".join(w[0] for w in a["words"])
    for system in systems:
        mine = {a["turn"]: a for a in answers if a["system"] == system and a["question_id"] == questions[0]}
        assert mine[2]["turn_start"] > mine[1]["user_end"]  # turn 2 is spoken after the reply to turn 1
    if "oracle-text" in systems:  # the back-end answered what it heard
        assert any(a["transcript"] for a in answers if a["system"] == "oracle-text")
    judgments = lines(out / "judgments.jsonl")
    assert len(judgments) == len(systems) * len(questions) * 2
    by_key = {(j["system"], j["question_id"], j["turn"]): j for j in judgments}
    for (_, qid, turn), j in by_key.items():
        reference = qid == 2  # our reasoning question: judged with its reference answers
        assert j["prompt"] == ("single-math-v1" if reference else "single-v1") + (
            "-multi-turn" if turn == 2 else ""
        )
    assert all(1 <= j["score"] <= 10 and j["judge_output"].startswith("Rating: [[") for j in judgments)
    results = json.loads((out / "results.json").read_text())
    for name in systems:
        summary = results["systems"][name]
        assert set(summary["score"]) == categories | {"average"}
        assert {"median", "p90", "n"} <= set(summary["latency"]) and summary["judge_failures"] == 0
        for category in categories:
            scores = [j["score"] for j in judgments if j["system"] == name and j["category"] == category]
            assert summary["score"][category] == pytest.approx(sum(scores) / len(scores), abs=1e-3)
    if "oracle-text" in systems:
        assert results["systems"]["oracle-text"]["latency"]["n"] == 0
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 3 and "135M" in report and "text stream" in report
    assert "http" not in report.replace("http-equiv", "")  # self-contained


def test_one_question_offline_produces_every_file(
    tmp_path, questions_file, judge_prompts_file, tiny_checkpoint
):
    out = tmp_path / "eval"
    args = ("--systems", "kame,oracle-text", "--categories", "stem", "--max-reply", "1")
    proc = subprocess.run(
        command(out, questions_file, judge_prompts_file, tiny_checkpoint, *args),
        capture_output=True, text=True, env=ENV, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_every_file(out, ("kame", "oracle-text"), (1,), {"stem"})


@pytest.mark.slow
def test_two_questions_offline_for_every_system(
    tmp_path, questions_file, judge_prompts_file, tiny_checkpoint
):
    out = tmp_path / "eval"
    args = ("--systems", "kame,moshi,oracle-text", "--categories", "stem,reasoning", "--workers", "2")
    proc = subprocess.run(
        command(out, questions_file, judge_prompts_file, tiny_checkpoint, *args),
        capture_output=True, text=True, env=ENV, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_every_file(out, ("kame", "moshi", "oracle-text"), (1, 2), {"stem", "reasoning"})
    # another judge judges the same answers; nothing is asked again
    from kame.backend.llm.local import default_model_path

    answers = (out / "answers.jsonl").read_text()
    other_judge = ("--judge", f"local:{default_model_path()}")
    again = subprocess.run(
        command(out, questions_file, judge_prompts_file, tiny_checkpoint, *args, *other_judge),
        capture_output=True, text=True, env=ENV, timeout=900,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "answers.jsonl").read_text() == answers
    judges = [j["judge"] for j in lines(out / "judgments.jsonl")]
    assert judges.count("local") == 12 and len(judges) == 24
    results = json.loads((out / "results.json").read_text())
    assert results["systems"]["kame"]["judgments"] == 4 and results["settings"]["judge"].startswith("local:")


def test_a_killed_run_resumes_without_redoing_finished_work(
    tmp_path, questions_file, judge_prompts_file, tiny_checkpoint
):
    out = tmp_path / "eval"
    args = command(
        out,
        questions_file,
        judge_prompts_file,
        tiny_checkpoint,
        "--systems",
        "moshi",
        "--categories",
        "stem,humanities",
    )
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    answers = out / "answers.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if answers.is_file() and len(answers.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with answers.open("a") as file:  # as if the kill had cut a line short
        file.write('{"system": "moshi", "question_id": 3, "cat')
    before = [line for line in answers.read_text().splitlines() if line.endswith("}")]
    done = {(json.loads(x)["question_id"], json.loads(x)["turn"]) for x in before}
    assert done and len(done) < 4
    first_audio = {p: p.stat().st_mtime_ns for p in (out / "audio").rglob("*.wav")}

    again = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    final = lines(answers)
    assert sorted((a["question_id"], a["turn"]) for a in final) == [(q, t) for q in (1, 3) for t in (1, 2)]
    assert [json.dumps(a) for a in final[: len(before)]] == [json.dumps(json.loads(x)) for x in before]
    for path, stamp in first_audio.items():  # the finished conversations were not asked again
        qid = int(path.name.split("-")[0])
        if (qid, 2) in done:
            assert path.stat().st_mtime_ns == stamp
    assert len(lines(out / "judgments.jsonl")) == 4


def test_models_that_cannot_load_stop_the_run_with_a_clear_error(
    tmp_path, questions_file, judge_prompts_file, tiny_checkpoint
):
    env = {k: v for k, v in ENV.items() if k != "OPENAI_API_KEY"}
    base = command(tmp_path / "a", questions_file, judge_prompts_file, tiny_checkpoint, "--systems", "kame")
    proc = subprocess.run([*base, "--judge", "openai:gpt-4.1"], capture_output=True, text=True, env=env)
    assert (
        proc.returncode == 2 and "--judge openai:gpt-4.1" in proc.stderr and "OPENAI_API_KEY" in proc.stderr
    )
    assert not (tmp_path / "a" / "answers.jsonl").exists()  # it failed before asking anything
    proc = subprocess.run(
        [*base, "--llm", f"local:{tmp_path / 'none.gguf'}"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2 and "cannot run kame" in proc.stderr and "none.gguf" in proc.stderr
    assert proc.stderr.count("Traceback") == 0


def test_the_cascade_answers_both_turns_after_the_user_finished(tmp_path, questions_file, judge_prompts_file):
    out = tmp_path / "eval"
    extra = ("--systems", "cascade", "--categories", "humanities", "--max-reply", "20")
    args = command(out, questions_file, judge_prompts_file, "tiny", *extra)
    proc = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = lines(out / "answers.jsonl")
    assert [(a["system"], a["turn"]) for a in answers] == [("cascade", 1), ("cascade", 2)]
    for a in answers:
        assert a["words"] and a["transcript"]  # SmolLM2's answer, spoken by Piper
        assert a["latency"] > 0  # a cascade waits for the end of the turn
        assert min(w[1] for w in a["words"]) > a["user_end"]
    assert answers[1]["turn_start"] > max(w[2] for w in answers[0]["words"])  # turn 2 after the reply
    results = json.loads((out / "results.json").read_text())
    assert results["systems"]["cascade"]["latency"]["before_user_end"] == 0.0
