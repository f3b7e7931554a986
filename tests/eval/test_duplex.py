"""Full-Duplex-Bench timing: the metrics on hand-timed samples, and ``kame eval duplex`` on a small set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import soundfile as sf

from kame.eval.duplex import find_samples, score_folder
from kame.eval.duplex_metrics import score_sample, summarize, take_over


def words(*spans):
    return [{"text": f"w{i}", "timestamp": list(span)} for i, span in enumerate(spans)]


def test_take_over_follows_the_benchmarks_rule():
    assert take_over([]) == 0
    assert take_over(words((1.0, 1.2), (1.3, 1.5), (1.6, 1.8))) == 0  # 0.8 s and 3 words: a backchannel
    assert take_over(words((1.0, 1.2), (1.3, 1.5), (1.6, 1.7), (1.7, 1.8))) == 1  # a 4th word
    assert take_over(words((1.0, 1.2), (2.3, 2.5))) == 1  # 1.5 s long
    assert take_over(words((1.0, 1.2), (2.3, None))) == 1  # a missing end: the last start counts


# Hand-timed samples: (task, words, task file, expected TOR, expected latency).
SAMPLES = [
    ("smooth_turn_taking", words((2.6, 3.0), (3.1, 4.6)), [{"timestamp": [2.0, 2.4]}], 1, 0.6),
    ("smooth_turn_taking", words((1.5, 2.0), (2.1, 3.5)), [{"timestamp": [2.0, 2.4]}], 1, 0.0),  # clamped
    ("smooth_turn_taking", words((2.2, 2.5)), [{"timestamp": [2.0, 2.4]}], 0, None),  # "yeah": no turn
    # before the interruption's end (5.0) nothing counts; after it, 0.8 s to the first word
    (
        "user_interruption",
        words((1.0, 2.0), (2.0, 3.0), (5.8, 6.5), (6.6, 7.5)),
        [{"timestamp": [3.5, 5.0]}],
        1,
        0.8,
    ),
    ("user_interruption", words((1.0, 2.0), (2.0, 4.9)), [{"timestamp": [3.5, 5.0]}], 0, None),
    ("pause_handling", [], [{"timestamp": [3.3, 4.0]}], 0, None),
    ("pause_handling", words((3.4, 4.0), (4.1, 4.9)), [{"timestamp": [3.3, 4.0]}], 1, None),
]


@pytest.mark.parametrize(("task", "chunks", "meta", "tor", "latency"), SAMPLES)
def test_hand_timed_samples(task, chunks, meta, tor, latency):
    scored = score_sample(task, chunks, meta)
    assert scored["tor"] == tor
    assert scored["latency"] == (None if latency is None else pytest.approx(latency))


def test_task_means():
    scored = [{"task": task, **score_sample(task, chunks, meta)} for task, chunks, meta, _, _ in SAMPLES]
    tasks = summarize(scored)
    assert tasks["smooth_turn_taking"] == {
        "samples": 3,
        "take_over_rate": 0.6667,
        "latency": 0.3,
        "latency_n": 2,
    }
    assert (
        tasks["user_interruption"]["take_over_rate"] == 0.5 and tasks["user_interruption"]["latency"] == 0.8
    )
    assert tasks["pause_handling"] == {"samples": 2, "take_over_rate": 0.5}


def test_folders_in_the_benchmarks_layout_are_scored_from_disk(tmp_path):
    for i, (task, chunks, meta, _, _) in enumerate(SAMPLES):
        folder = tmp_path / task / str(i)
        folder.mkdir(parents=True)
        sf.write(str(folder / "input.wav"), [0.0] * 1600, 16000)
        name = {
            "smooth_turn_taking": "turn_taking.json",
            "user_interruption": "interrupt.json",
            "pause_handling": "pause.json",
        }[task]
        (folder / name).write_text(json.dumps(meta))
        (folder / "output.json").write_text(json.dumps({"text": "", "chunks": chunks}))
    results = score_folder(tmp_path)
    assert results["tasks"]["smooth_turn_taking"]["latency"] == 0.3
    assert len(results["samples"]) == len(SAMPLES) and not results["unscored"]


@pytest.fixture(scope="module")
def duplex_set(tmp_path_factory):
    from duplex_samples import build_duplex_set

    from kame.audio.tts import create_tts

    return build_duplex_set(tmp_path_factory.mktemp("fdb"), create_tts("piper"))


def test_the_test_set_is_in_the_benchmarks_layout(duplex_set):
    samples = find_samples(duplex_set)
    assert sorted(s.task for s in samples) == [
        "pause_handling",
        "smooth_turn_taking",
        "user_interruption",
        "v1.5/background_speech",
    ]


def test_kame_eval_duplex_answers_in_place_and_resumes(duplex_set, tiny_checkpoint):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_TORCH_COMPILE": "1"}
    command = [
        sys.executable,
        "-m",
        "kame",
        "eval",
        "duplex",
        str(duplex_set),
        "--system",
        "moshi",
        "--moshi-frontend",
        tiny_checkpoint,
        "--transcript",
        "text",
        "--max-reply",
        "2",
        "--no-progress",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((duplex_set / "results_moshi.json").read_text())
    assert set(results["tasks"]) == {
        "pause_handling",
        "smooth_turn_taking",
        "user_interruption",
        "v1.5/background_speech",
    }
    for sample in find_samples(duplex_set):
        source = sf.info(str(sample.folder / "input.wav"))
        output = sf.info(str(sample.folder / "output.wav"))
        assert output.samplerate == 24000 and output.duration >= source.duration  # on the input's clock
        chunks = json.loads((sample.folder / "output.json").read_text())["chunks"]
        if sample.cut_at is not None:
            assert all(c["timestamp"][0] >= sample.cut_at for c in chunks)
    clean = duplex_set / "v1.5" / "background_speech" / "1"
    assert (clean / "clean_output.wav").is_file() and (clean / "clean_output.json").is_file()
    # the scores are the benchmark's definitions applied to the files on disk
    assert results["tasks"] == score_folder(duplex_set)["tasks"]
    stamps = {p: p.stat().st_mtime_ns for p in duplex_set.rglob("output.wav")}
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in duplex_set.rglob("output.wav")} == stamps  # nothing redone
