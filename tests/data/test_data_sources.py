"""Sources: local JSONL/Parquet with column mappings, the presets' mappings, dialogue turns, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kame.data.sources import ColumnMap, SourceError, open_source, to_record


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_default_columns(tmp_path):
    path = _jsonl(
        tmp_path / "qa.jsonl", [{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2."}]
    )
    records = list(open_source(f"jsonl:{path}"))
    assert [r.id for r in records] == ["qa-000000", "qa-000001"]
    assert (records[1].question, records[1].answer) == ("Q2?", "A2.")


def test_parquet_with_column_mapping(tmp_path):
    table = pa.table(
        {
            "uid": ["a1", "b2"],
            "problem": ["What is two plus two?", "Name a red fruit."],
            "solution": ["Four.", "An apple."],
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    records = list(open_source(f"parquet:{tmp_path}", columns="question=problem,answer=solution,id=uid"))
    assert [(r.id, r.question, r.answer) for r in records] == [
        ("a1", "What is two plus two?", "Four."),
        ("b2", "Name a red fruit.", "An apple."),
    ]


def test_gsm8k_mapping_keeps_the_final_answer():
    row = {
        "question": "Tom has 3 apples and buys 4 more. How many?",
        "answer": "He has 3+4=<<3+4=7>>7 apples.\n#### 7",
    }
    record = to_record(row, ColumnMap(), "gsm8k", default_id="gsm8k-000000", index=0)
    assert record.final == "7"
    assert "<<" not in record.answer and record.answer.endswith("The answer is 7.")


def test_mmlu_pro_mapping_spells_out_options(tmp_path):
    rows = [
        {
            "question_id": 70,
            "question": "Which gas do plants take in?",
            "options": ["Oxygen", "Carbon dioxide", "Helium"],
            "answer": "B",
            "answer_index": 1,
            "category": "biology",
        }
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mmlu.parquet")
    mapping = "options=options,id=question_id"
    record = next(open_source(f"parquet:{tmp_path / 'mmlu.parquet'}", columns=mapping))
    assert record.id == "70" and record.answer == "Carbon dioxide" and record.final == "Carbon dioxide"
    assert "A, Oxygen; B, Carbon dioxide; C, Helium" in record.question
    assert record.meta["category"] == "biology"
    by_index = to_record(rows[0] | {"answer": 1}, ColumnMap(options="options"), "mcq", "x", 0)
    assert by_index.answer == "Carbon dioxide"


def test_dialogue_turns(tmp_path):
    messages = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "Hi, who are you?"},
        {"role": "assistant", "content": "A helper."},
        {"role": "user", "content": "Great, thanks."},
        {"role": "assistant", "content": "You are welcome."},
    ]
    path = _jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    record = next(open_source(f"jsonl:{path}", columns="turns=messages"))
    assert [t.speaker for t in record.turns] == ["user", "assistant", "user", "assistant"]
    assert record.question == "Hi, who are you?" and record.answer == "A helper."


def test_recordings_resolve_next_to_the_source(tmp_path):
    path = _jsonl(tmp_path / "rec.jsonl", [{"question": "Q?", "answer": "A.", "wav": "clips/q.wav"}])
    record = next(open_source(f"jsonl:{path}", columns="question_audio=wav"))
    assert record.meta["audio"] == {"0": str((tmp_path / "clips" / "q.wav").resolve())}


@pytest.mark.parametrize(
    ("spec", "columns", "message"),
    [
        ("csv:x.csv", None, "unknown source"),
        ("jsonl:/nonexistent/q.jsonl", None, "no such file"),
        ("hf:gsm8k", None, "OWNER/NAME"),
        ("hssbench", None, "needs its hub id"),
        ("jsonl:{path}", "question=prompt", "no column 'prompt'"),
        ("jsonl:{path}", "quest=prompt", "bad column"),
    ],
)
def test_clear_errors(tmp_path, spec, columns, message):
    path = _jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": "A."}])
    with pytest.raises(SourceError, match=message):
        list(open_source(spec.format(path=path), columns=columns))


def test_bad_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "Q?", "answer": "A."}\n{oops\n')
    with pytest.raises(SourceError, match=r"bad.jsonl:2"):
        list(open_source(f"jsonl:{path}"))


def test_hub_source_offline_is_a_clear_error():
    """The hub cannot be reached here: a preset must fail with advice, not hang or crash."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": "/nonexistent-kame-hf"}
    code = "from kame.data.sources import open_source\nnext(open_source('gsm8k'))"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "SourceError" in result.stderr and "cannot open openai/gsm8k" in result.stderr
