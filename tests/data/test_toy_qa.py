"""The toy oracle-following Q&A: answers name key words the question does not predict, the tiny tokenizer
spells them in one or two pieces, and the build script turns them into a verbatim-oracle dataset."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import sentencepiece
from data_checks import check_record

from kame.data.dataset import read_records
from kame.data.toy_qa import key_vocabulary, toy_rows
from kame.frontend.checkpoint import train_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def test_key_words_are_unpredictable_and_spellable():
    vocabulary = key_vocabulary()
    assert len(vocabulary) >= 100
    tokenizer = sentencepiece.SentencePieceProcessor(model_proto=train_tiny_tokenizer())
    assert all(len(tokenizer.encode(" " + w)) <= 2 for w in vocabulary)
    rows = toy_rows(500, seed=3)
    assert len({r["id"] for r in rows}) == 500
    question_words = set().union(*(_words(r["question"]) for r in rows))
    assert not question_words & set(vocabulary)  # no question says (or hints by spelling) a key word
    for row in rows:
        assert 2 <= len(row["keywords"]) <= 3 and set(row["keywords"]) <= set(vocabulary)
        assert set(row["keywords"]) <= _words(row["answer"])
    used = {w for r in rows for w in r["keywords"]}
    assert len(used) > 0.9 * len(vocabulary)  # the draws spread over the whole vocabulary
    assert toy_rows(500, seed=3) == rows and toy_rows(500, seed=4) != rows


def test_build_script_makes_a_verbatim_oracle_dataset(tmp_path):
    out = tmp_path / "toy"
    command = [sys.executable, str(ROOT / "scripts" / "build_tiny_oracle_data.py"), "--out", str(out)]
    result = subprocess.run(command + ["--count", "4"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = {r["id"]: r for r in map(json.loads, (out / "source.jsonl").read_text().splitlines())}
    records = list(read_records(out / "dataset"))
    assert sorted(r.id for r in records) == sorted(rows) == [f"toy-0-{i:06d}" for i in range(4)]
    for record in records:
        check_record(record)
        row = rows[record.id]
        assert record.meta["source"]["keywords"] == row["keywords"]
        assert [(e["level"], e["text"]) for e in record.meta["oracles"]] == [(5, row["answer"])]


def test_build_script_passes_the_response_gap_on(tmp_path):
    """``--response-gap`` reaches ``kame data build``: every answer starts that long after its question."""
    out = tmp_path / "toy"
    command = [sys.executable, str(ROOT / "scripts" / "build_tiny_oracle_data.py"), "--out", str(out)]
    result = subprocess.run(
        command + ["--count", "3", "--response-gap", "1.5,1.6"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for record in read_records(out / "dataset"):
        user, assistant = record.meta["user_words"], record.meta["assistant_words"]
        assert 1.45 <= assistant[0]["start"] - user[-1]["end"] <= 1.65
