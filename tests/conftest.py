"""Shared fixtures: small synthetic data sets that tiny models learn in seconds."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest
import torch

# Tiny models run fastest on one thread, and a busy 2-core machine punishes oversubscription;
# subprocesses (the CLI, servers) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
GOOD = ["great", "wonderful", "moving", "superb", "delightful", "brilliant", "charming", "gripping"]
BAD = ["dull", "tedious", "awful", "boring", "clumsy", "lifeless", "painful", "forgettable"]
FILLER = ["the", "film", "is", "a", "story", "with", "cast", "and", "plot", "its", "director", "this", "movie"]


def synthetic_reviews(n: int, seed: int) -> list[tuple[str, str]]:
    """Texts whose label is decided by one sentiment word hidden among filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.choices(FILLER, k=rng.randint(3, 14))
        words.insert(rng.randint(0, len(words)), rng.choice(GOOD if label == "pos" else BAD))
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def reviews_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "reviews.csv", synthetic_reviews(600, seed=1))


NUMBERS = {"zero": "null", "one": "eins", "two": "zwei", "three": "drei", "four": "vier", "five": "fünf",
           "six": "sechs", "seven": "sieben", "eight": "acht", "nine": "neun"}


def synthetic_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """A toy translation task (English number words to German, word by word) that a tiny model learns."""
    rng = random.Random(seed)
    words = list(NUMBERS)
    pairs = []
    for _ in range(n):
        src = rng.choices(words, k=rng.randint(2, 7))
        pairs.append((" ".join(src), " ".join(NUMBERS[w] for w in src)))
    return pairs


def write_tsv(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path

pytest_plugins = ["tests.fixtures"]

ANIMALS = ("cat", "dog", "elephant", "giraffe", "kangaroo", "hippopotamus")
PLACES = ("fence", "river", "mountain", "meadow", "waterfall")
VERBS = ("jumps over", "runs along", "sleeps near", "watches")


def synthetic_sentences(n: int, seed: int) -> list[str]:
    """A toy language with long words (several pieces each under a small vocabulary) that a tiny model learns."""
    rng = random.Random(seed)
    return [f"{rng.choice(('the', 'a'))} {rng.choice(ANIMALS)} {rng.choice(VERBS)} the {rng.choice(PLACES)}"
            + rng.choice(("", ".", " today.")) for _ in range(n)]


CITIES = ["boston", "denver", "dallas", "atlanta", "new york", "san francisco", "salt lake city", "miami"]
DAYS = ["monday", "tuesday", "friday", "sunday"]


def synthetic_tagged(n: int, seed: int) -> list[tuple[list[str], list[str], str]]:
    """(words, BIO tags, intent) for a toy slot-filling task: which city is the origin depends on the word before
    it ("from" or "to"), and the intent on the opening words."""
    rng = random.Random(seed)
    out = []

    def city(slot: str) -> tuple[list[str], list[str]]:
        words = rng.choice(CITIES).split()
        return words, [f"B-{slot}"] + [f"I-{slot}"] * (len(words) - 1)

    for i in range(n):
        intent = "flight" if i % 2 == 0 else "airfare"
        words = ["show", "me", "flights"] if intent == "flight" else ["how", "much", "is", "a", "ticket"]
        tags = ["O"] * len(words)
        legs = [("from", "fromloc"), ("to", "toloc")]
        rng.shuffle(legs)
        for word, slot in legs:
            w, t = city(slot)
            words += [word, *w]
            tags += ["O", *t]
        if rng.random() < 0.5:
            words += ["on", rng.choice(DAYS)]
            tags += ["O", "B-depart_date.day_name"]
        out.append((words, tags, intent))
    return out


def write_seq_folder(folder: Path, splits: dict[str, list[tuple[list[str], list[str], str]]]) -> Path:
    """The ATIS/SNIPS folder format: <split>.seq.in, .seq.out, .label."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (folder / f"{split}.seq.in").write_text("".join(" ".join(w) + "\n" for w, _, _ in rows), encoding="utf-8")
        (folder / f"{split}.seq.out").write_text("".join(" ".join(t) + "\n" for _, t, _ in rows), encoding="utf-8")
        (folder / f"{split}.label").write_text("".join(i + "\n" for _, _, i in rows), encoding="utf-8")
    return folder
