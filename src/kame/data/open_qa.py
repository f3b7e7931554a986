"""Spoken Q&A for an open-vocabulary oracle follower: the data of the shipped tiny front-end.

The offline back-end's LLM (SmolLM2) says anything, so the front-end that follows it must copy any text
the tiny tokenizer can spell, not a fixed set of answers. The rows pair a question with an answer that
the question does not predict (drawn independently of it), in three kinds:

- ``llm``: one of the embedded LLM's own answers to a question (what a live oracle looks like);
- ``span``: a run of consecutive words from those answers or the tiny corpus (real word order, endless
  variety);
- ``words``: words drawn at random from that vocabulary and from the tiny tokenizer's own pieces (so
  that every piece it can say is seen; nothing to guess from: copying only);
- ``pseudo``: the same, but most words made up of 2-3 random pieces of the tokenizer ("sporntilth"). A
  vocabulary of a few thousand real words teaches which piece follows which inside them: live, a word
  the data never had ("spider": sp id er) is then said with a familiar ending ("sp orn"). Made-up words
  have no ending to remember, so the model must copy every piece.

Everything is drawn from ``random.Random(seed)``; the LLM's answers are an input (``llm_answers``).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence
from importlib import resources

TOPICS = (
    "France", "Japan", "the moon", "the sun", "water", "dogs", "cats", "the ocean", "music", "coffee",
    "tea", "rain", "snow", "the brain", "the heart", "trees", "bees", "chess", "football", "Paris",
    "London", "the internet", "a computer", "electricity", "gravity", "the stars", "Mars", "volcanoes",
    "earthquakes", "bread", "cheese", "rice", "apples", "bananas", "the piano", "the guitar", "birds",
    "whales", "sharks", "the desert", "the jungle", "mountains", "rivers", "the weather", "clouds",
    "lightning", "the wind", "time", "clocks", "books", "libraries", "schools", "hospitals", "doctors",
    "medicine", "vitamins", "sleep", "dreams", "exercise", "running", "swimming", "cycling", "trains",
    "planes", "cars", "ships", "rockets", "robots", "language", "English", "history", "the Romans",
    "Egypt", "the pyramids", "dinosaurs", "fossils", "plants", "flowers", "photosynthesis", "oxygen",
    "carbon", "gold", "iron", "salt", "sugar", "chocolate", "pizza", "soup", "breakfast", "a birthday",
    "holidays", "winter", "summer", "spring", "autumn", "the night", "the morning", "friends", "family",
    "money", "banks", "markets", "cooking", "painting", "poetry", "films", "theatre", "dance", "maths",
    "numbers", "physics", "chemistry", "biology", "the earth", "islands", "Italy", "Spain", "Germany",
    "China", "India", "Brazil", "Canada", "Africa", "Australia", "penguins", "horses", "elephants", "lions",
)  # fmt: skip
TEMPLATES = (
    "What is {t}?",
    "Tell me something about {t}.",
    "Why is {t} important?",
    "What do you know about {t}?",
    "Can you explain {t} to me?",
    "What is interesting about {t}?",
    "How would you describe {t}?",
    "What should I know about {t}?",
    "Give me a fact about {t}.",
    "What is the best thing about {t}?",
)
KINDS = ("llm", "span", "words", "pseudo")
# Their shares. Random words weigh most: they can only be copied, while the LLM's 300 answers (and runs of
# their words) can also be memorised, and a memorised phrase ("The best thing about") then wins over the
# oracle's own words. Measured live with bench/default_following.py: the shares (0.4, 0.4, 0.2) gave
# 57.8 % (9 runs) with the tiny preset and 49.8 % (1 run) with tiny-wide; these 61.6 % (3 runs) and
# 72.1 % (6 runs). Made-up words are not in this mix: scripts/train_tiny_default.py builds them as sets
# of their own beside it (weights (0, 0, 0, 1)), which keeps this mix's seeded rows as they were.
KIND_WEIGHTS = (0.25, 0.35, 0.4, 0.0)
PSEUDO_SHARE = 0.6  # of a pseudo answer's words, the share that are made up (the rest real words)
PSEUDO_PIECES = (2, 3)


def questions(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct questions (templates x topics, shuffled by ``seed``)."""
    every = [template.format(t=topic) for topic in TOPICS for template in TEMPLATES]
    random.Random(f"open-qa-questions:{seed}").shuffle(every)
    if count > len(every):
        raise ValueError(f"at most {len(every)} distinct questions, asked for {count}")
    return every[:count]


def corpus_sentences() -> list[str]:
    """The tiny tokenizer's corpus, one sentence a line."""
    text = resources.files("kame.frontend").joinpath("assets/tiny_corpus.txt").read_text()
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 3]


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z][A-Za-z']*|\d+", text)


@functools.cache
def _letter_pieces() -> tuple[str, ...]:
    """The tiny tokenizer's pieces made of ASCII letters only (any length), without the word marker.

    Cached: the tokenizer is trained from its corpus on each call of ``train_tiny_tokenizer``."""
    import sentencepiece

    from kame.frontend.checkpoint import train_tiny_tokenizer

    sp = sentencepiece.SentencePieceProcessor(model_proto=train_tiny_tokenizer())
    pieces = (sp.id_to_piece(i).lstrip("\u2581") for i in range(sp.get_piece_size()))
    return tuple(sorted({p for p in pieces if p.isalpha() and p.isascii()}))


def _piece_words() -> list[str]:
    """The tiny tokenizer's word-like pieces (letters only, at least two), as words to say."""
    return [p for p in _letter_pieces() if len(p) >= 2]


def open_rows(
    count: int,
    llm_answers: Sequence[str],
    seed: int = 0,
    weights: tuple[float, ...] = KIND_WEIGHTS,
    span: tuple[int, int] = (4, 14),
    max_words: int = 18,
) -> list[dict[str, object]]:
    """``count`` rows ``{"id", "question", "answer", "kind"}``; ids are ``open-SEED-INDEX``. LLM answers
    are cut after ``max_words`` words (the first ten are what a listener hears first; the rest costs
    training time)."""
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    answers = [a for a in llm_answers if len(_words(a)) >= 2]
    if not answers:
        raise ValueError("open_rows needs some LLM answers (two words or more)")
    texts = answers + corpus_sentences()
    vocabulary = sorted({w for text in texts for w in _words(text)} | set(_piece_words()))
    if len(weights) != len(KINDS):
        raise ValueError(f"weights: one share per kind of {KINDS}, got {weights}")
    letters = _letter_pieces()
    asked = questions(min(len(TOPICS) * len(TEMPLATES), max(count, 1)), seed)
    rng = random.Random(f"open-qa:{seed}")
    rows: list[dict[str, object]] = []
    for index in range(count):
        kind = rng.choices(KINDS, weights=weights)[0]
        if kind == "llm":
            answer = rng.choice(answers)
            if len(answer.split()) > max_words:
                answer = " ".join(answer.split()[:max_words]).rstrip(",.") + "."
        elif kind == "span":
            words = _words(rng.choice(texts))
            length = rng.randint(*span)
            first = rng.randint(0, max(0, len(words) - length))
            answer = " ".join(words[first : first + length]) + "."
        elif kind == "words":
            answer = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(*span))) + "."
        else:
            made = (
                "".join(rng.choice(letters) for _ in range(rng.randint(*PSEUDO_PIECES))).lower()
                if rng.random() < PSEUDO_SHARE
                else rng.choice(vocabulary)
                for _ in range(rng.randint(*span))
            )
            answer = " ".join(made) + "."
        rows.append(
            {"id": f"open-{seed}-{index:06d}", "question": rng.choice(asked), "answer": answer, "kind": kind}
        )
    return rows
