"""The shipped default's data: open-vocabulary answers drawn independently of their questions, covering
the tiny tokenizer's word pieces, and the build's response gap."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

from kame.data.open_qa import KINDS, _piece_words, open_rows, questions

ANSWERS = [
    "The capital of France is Paris, a city on the river Seine.",
    "Bees make honey from the nectar of flowers.",
    "A spider has eight legs and most have eight eyes.",
]


def test_rows_are_repeatable_mixed_and_not_predicted_by_their_questions():
    rows = open_rows(600, ANSWERS, seed=2, weights=(0.25, 0.25, 0.25, 0.25))
    again = open_rows(600, ANSWERS, seed=2, weights=(0.25, 0.25, 0.25, 0.25))
    assert again == rows and open_rows(600, ANSWERS, seed=3, weights=(0.25, 0.25, 0.25, 0.25)) != rows
    kinds = Counter(r["kind"] for r in rows)
    assert set(kinds) == set(KINDS) and min(kinds.values()) > 60
    assert len({r["id"] for r in rows}) == 600 and set(r["question"] for r in rows) <= set(questions(600, 2))
    by_answer: dict[str, set[str]] = {}
    for row in rows:
        by_answer.setdefault(str(row["answer"]), set()).add(str(row["question"]))
    # the same LLM answer follows many different questions: only the oracle tells which answer comes
    assert all(len(by_answer[a]) > 20 for a in ANSWERS)
    said = {w for r in rows if r["kind"] == "words" for w in str(r["answer"]).rstrip(".").split()}
    assert len(said & set(_piece_words())) > 100  # the tokenizer's own pieces are spoken too


def test_pseudo_answers_are_mostly_made_up_words_of_tokenizer_pieces():
    rows = open_rows(300, ANSWERS, seed=4, weights=(0, 0, 0, 1))
    assert {r["kind"] for r in rows} == {"pseudo"}
    real = {w.lower() for a in ANSWERS for w in a.replace(",", "").rstrip(".").split()}
    real |= {w.lower() for w in _piece_words()}
    words = [w for r in rows for w in str(r["answer"]).rstrip(".").split()]
    made = [w for w in words if w.lower() not in real]
    assert 0.45 < len(made) / len(words) < 0.8  # PSEUDO_SHARE (0.6), less the few that hit a real word
    assert len(set(made)) > 0.9 * len(made) and all(w.isalpha() and w.isascii() for w in made)


def test_response_gap_is_checked():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "kame", "data", "build", "--source", "jsonl:x.jsonl", "--out", "o",
         "--response-gap", "2,1"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert proc.returncode == 2 and "--response-gap" in proc.stderr and "LOW <= HIGH" in proc.stderr
