"""``kame infer`` end to end, as a user runs it, on real (espeak-ng) speech and a tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import soundfile as sf

from kame.audio.io import resample


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory) -> Path:
    """A spoken question at 16 kHz stereo, to exercise resampling and down-mixing."""
    folder = tmp_path_factory.mktemp("speech")
    mono = folder / "mono.wav"
    subprocess.run(["espeak-ng", "-w", str(mono), "What is the capital of France?"], check=True)
    audio, rate = sf.read(str(mono), dtype="float32")
    audio = resample(audio, rate, 16000)
    stereo = folder / "question.wav"
    sf.write(str(stereo), np.stack([audio, 0.5 * audio], axis=1), 16000)
    return stereo


def _kame(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_TORCH_COMPILE": "1"}
    return subprocess.run([sys.executable, "-m", "kame", *args], capture_output=True, text=True, env=env)


def test_infer_end_to_end(tiny_checkpoint, question_wav, tmp_path):
    script = tmp_path / "oracle.jsonl"
    script.write_text(
        "\n".join(
            json.dumps(line)
            for line in [
                {"time": 0.4, "op": "reset", "text": "The capital"},
                {"time": 0.45, "op": "append", "text": " of France is Paris."},
                {"time": 0.5, "op": "end"},
            ]
        )
    )
    outputs = []
    for run in range(2):
        wav, tokens = tmp_path / f"out{run}.wav", tmp_path / f"tokens{run}.json"
        proc = _kame(
            "infer", str(question_wav), "--frontend", tiny_checkpoint, "--oracle-script", str(script),
            "--output", str(wav), "--tokens", str(tokens), "--greedy", "--seed", "1",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        outputs.append((wav.read_bytes(), json.loads(tokens.read_text())))
    assert outputs[0] == outputs[1]  # --greedy is deterministic

    frames = outputs[0][1]["frames"]
    audio, rate = sf.read(str(tmp_path / "out0.wav"))
    assert rate == 24000
    duration = sf.info(str(question_wav)).duration
    assert len(frames) == int(np.ceil(duration * 24000 / 1920))
    # The timing convention: step s's audio starts at 80 (s + 1) ms; the reply covers the whole input.
    assert len(audio) == (len(frames) + 1) * 1920 >= duration * 24000
    assert not np.any(audio[:1920])
    assert [f["frame"] for f in frames] == list(range(len(frames)))
    assert all(len(f["user"]) == 8 for f in frames)
    assert frames[0]["text"] is None and frames[0]["audio"] is None
    assert all(isinstance(f["text"], int) and len(f["audio"]) == 8 for f in frames[1:])

    sp = sentencepiece.SentencePieceProcessor(model_file=str(Path(tiny_checkpoint) / "tokenizer.model"))
    expected = [1000, *sp.encode("The capital of France is Paris.")]
    fed = [f["oracle"] for f in frames]
    assert fed[5 : 5 + len(expected)] == expected  # frame floor(0.4 * 12.5) = 5
    assert set(fed[:5]) == {3} and set(fed[5 + len(expected) :]) <= {3}  # pad at step 0 too, as released


def test_infer_reports_bad_input_clearly(tiny_checkpoint, question_wav, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"time": 0.1, "op": "reset"}\n{"time": -1, "op": "append", "text": "x"}\n')
    proc = _kame("infer", str(question_wav), "--frontend", tiny_checkpoint, "--oracle-script", str(bad),
                 "--output", str(tmp_path / "o.wav"))  # fmt: skip
    assert proc.returncode == 2
    assert "bad.jsonl:2: 'time' must be a number of seconds >= 0" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = _kame("infer", str(tmp_path / "missing.wav"), "--frontend", tiny_checkpoint, "--output", "o.wav")
    assert proc.returncode == 2 and "no such audio file" in proc.stderr

    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not audio")
    proc = _kame("infer", str(not_audio), "--frontend", tiny_checkpoint, "--output", "o.wav")
    assert proc.returncode == 2 and "not a readable audio file" in proc.stderr
