"""The tagger through the console script: each data format with default options, evaluation, bad input (exit 2)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.conftest import synthetic_tagged
from tests.training.test_train_cli import seqserve

TINY = ["--epochs", "3", "--emb-dim", "16", "--hidden", "16", "--dropout", "0.1", "--vocab-size", "300",
        "--batch-size", "16", "--lr", "0.01"]


def write_conll(path: Path, rows: list[tuple[list[str], list[str], str]]) -> Path:
    lines = ["-DOCSTART- -X- O", ""]
    for words, tags, _ in rows:
        lines += [f"{w} NN {t}" for w, t in zip(words, tags, strict=True)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[tuple[list[str], list[str], str]]) -> Path:
    """The same sentences as text with character spans; some in Chinese, with the city names per character."""
    rng = random.Random(0)
    lines = []
    for words, tags, intent in rows:
        if rng.random() < 0.3:
            words = [w if not t.startswith(("B-", "I-")) else "北京" for w, t in zip(words, tags, strict=True)]
        text, spans, open_span = "", [], None
        for word, tag in zip(words, tags, strict=True):
            start = len(text) + (1 if text else 0)
            text = f"{text} {word}" if text else word
            if tag.startswith("B-"):
                open_span = {"start": start, "end": len(text), "label": tag[2:]}
                spans.append(open_span)
            elif tag.startswith("I-") and open_span is not None:
                open_span["end"] = len(text)
            else:
                open_span = None
        lines.append(json.dumps({"text": text, "spans": spans, "intent": intent}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["conll", "jsonl"])
def test_train_and_evaluate_a_tagger_from_each_format(tmp_path: Path, fmt: str) -> None:
    rows = synthetic_tagged(300, seed=21)
    data = write_conll(tmp_path / "train.conll", rows) if fmt == "conll" else write_jsonl(tmp_path / "d.jsonl", rows)
    seqserve("train", "tagger", "--data", data, "--out", tmp_path / "repo" / "t", "--work-dir", tmp_path / "run", *TINY)
    version = tmp_path / "repo" / "t" / "1"
    config = json.loads((version / "config.json").read_text())
    assert config["kind"] == "tagger" and config["model"]["crf"] and config["files"] == {"crf": "crf.npz"}
    assert bool(config["intents"]) == (fmt == "jsonl")
    test = json.loads((version / "metrics.json").read_text())["test"]
    assert test["slot_f1"] >= 0.8 and test["sentences"] == 30
    assert set(test["per_slot"]) >= {"fromloc", "toloc"}
    seqserve("evaluate", version, "--data", data, "--split", "all")
    assert json.loads((version / "metrics.json").read_text())["all"]["sentences"] == 300


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("fly from boston\n", "seq.out"),
        (None, "2 words but 3 tags"),
    ],
)
def test_bad_tagged_data_exits_2_with_one_line(tmp_path: Path, content: str | None, message: str) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.seq.in").write_text("fly to boston\nto miami\n", encoding="utf-8")
    if content is None:
        (folder / "train.seq.out").write_text("O O B-toloc\nO B-toloc O\n", encoding="utf-8")
    result = seqserve("train", "tagger", "--data", folder, "--out", tmp_path / "out", *TINY, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_jordan_and_no_crf_are_options(tmp_path: Path, tagger_data: Path) -> None:
    seqserve("train", "tagger", "--data", tagger_data, "--cell", "jordan", "--no-crf", "--dry-run",
             "--out", tmp_path / "repo" / "j", "--work-dir", tmp_path / "run", *TINY)
    config = json.loads((tmp_path / "repo" / "j" / "1" / "config.json").read_text())
    assert config["model"]["cell"] == "jordan" and not config["model"]["crf"] and "files" not in config
