"""Spoken Q&A whose answers hold words the question does not predict: the toy oracle-following task.

A model can only say such an answer's key words by copying them from its oracle, so "with the oracle it
says them, without it it does not" measures oracle following, not memorisation. Questions come from a few
templates (so they sound different), and each answer names two or three key words drawn at random from
the tiny tokenizer's corpus (``assets/tiny_corpus.txt``): words the tiny text stream can spell in one or
two pieces. Everything is drawn from ``random.Random(seed)``, so a seed always gives the same rows.

Rows are ``{"id", "question", "answer", "keywords"}``: a ``jsonl:`` source for ``kame data build``
(``keywords`` is kept in each built record's ``source`` metadata).
"""

from __future__ import annotations

import json
import random
import re
from importlib import resources
from pathlib import Path

from kame.data.text import STOPWORDS

QUESTIONS = (
    "What did my sister find in the garden this morning?",
    "Which words did the teacher write on the board?",
    "What is the secret word for today?",
    "What did you see on your walk in the park?",
    "Can you tell me the words on the little card?",
    "What was in the box that came today?",
    "What should I take with me tomorrow?",
    "What did the old man say at the station?",
    "Which things were on the shopping list?",
    "What did you hear on the radio last night?",
    "What was written on the back of the letter?",
    "What did our neighbour bring to the party?",
)
OPENINGS = ("", "Hello. ", "Please tell me, ", "Quick question. ", "Sorry, ")
ANSWERS = (
    "It was {words}.",
    "I think it is {words}.",
    "The answer is {words}.",
    "They are {words}.",
    "It said {words}.",
)
MAX_PIECES = 2  # a key word must be at most this many tiny-tokenizer pieces


def _words_of(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def key_vocabulary(max_pieces: int = MAX_PIECES) -> list[str]:
    """Content words of the tiny corpus that no question or answer template uses, spelt in at most
    ``max_pieces`` pieces by the tiny tokenizer (sorted, so the list is the same on every machine)."""
    import sentencepiece

    from kame.frontend.checkpoint import train_tiny_tokenizer

    corpus = resources.files("kame.frontend").joinpath("assets/tiny_corpus.txt").read_text()
    template_words = set().union(*(_words_of(t) for t in QUESTIONS + OPENINGS + ANSWERS))
    candidates = sorted(
        w
        for w in _words_of(corpus)
        if len(w) >= 3 and w not in STOPWORDS and w not in template_words and w.isalpha()
    )
    tokenizer = sentencepiece.SentencePieceProcessor(model_proto=train_tiny_tokenizer())
    return [w for w in candidates if len(tokenizer.encode(" " + w)) <= max_pieces]


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def toy_rows(count: int, seed: int = 0, vocabulary: list[str] | None = None) -> list[dict[str, object]]:
    """``count`` Q&A rows; ids are ``toy-SEED-INDEX``, so sets made with different seeds do not clash."""
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    vocabulary = vocabulary if vocabulary is not None else key_vocabulary()
    if len(vocabulary) < 3:
        raise ValueError("the key-word vocabulary needs at least three words")
    rng = random.Random(f"toy-qa:{seed}")
    rows: list[dict[str, object]] = []
    for index in range(count):
        opening, question = rng.choice(OPENINGS), rng.choice(QUESTIONS)
        if opening.endswith(", "):
            question = question[0].lower() + question[1:]
        question = opening + question
        keys = rng.sample(vocabulary, k=rng.choice((2, 3)))
        answer = rng.choice(ANSWERS).format(words=_join(keys))
        rows.append(
            {"id": f"toy-{seed}-{index:06d}", "question": question, "answer": answer, "keywords": keys}
        )
    return rows


def write_toy_source(path: str | Path, count: int, seed: int = 0) -> Path:
    """Write ``toy_rows(count, seed)`` as JSON Lines (a ``jsonl:PATH`` source) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = toy_rows(count, seed)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
