"""Readers for tagged sentences (slot filling / NER, with an optional intent per sentence), and the ATIS recipe.

Formats: an ATIS/SNIPS folder ({train,dev,test}.seq.in/.seq.out/.label, or JointBERT's <split>/seq.in ...), CoNLL
(a token a line, a blank line between sentences) and JSONL with character spans (as Rasa, spaCy and doccano).
Every problem a user can cause raises `DataError` with one line naming the file and, where it applies, the line.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from service.engine.tags import OUTSIDE, repair_bio, split_words
from training.data import DataError, default_data_dir, read_text

log = logging.getLogger("seqserve.train")

SPLIT_NAMES = {"train": "train", "dev": "valid", "valid": "valid", "test": "test"}  # file prefix -> split
SPLITS = ("train", "valid", "test")
SEQ_FIELDS = ("seq.in", "seq.out", "label")
ATIS_ENV = "SEQSERVE_ATIS_DIR"
ATIS_URL = "https://raw.githubusercontent.com/monologg/JointBERT/master/data/atis/{split}/{field}"
ATIS_SPLITS = ("train", "dev", "test")
_NOT_SPACE = re.compile(r"\S")


@dataclass(frozen=True)
class Sentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]  # one per word, BIO (or BIOES) strings, "O" outside
    intent: str | None = None


def _lines(path: Path) -> list[str]:
    """A file's lines, split at newlines only (numbered as editors number them), without line ends."""
    lines = [line.removesuffix("\r") for line in read_text(path).split("\n")]
    return lines[:-1] if lines and not lines[-1] else lines


def check_sentences(sentences: list[Sentence], source: str) -> list[Sentence]:
    """The sentences with I- tags that open an entity made B-, and how many were logged; none at all is an error."""
    if not sentences:
        raise DataError(f"{source}: no sentences")
    repaired, total = [], 0
    for sentence in sentences:
        tags, changed = repair_bio(list(sentence.tags))
        total += changed
        repaired.append(Sentence(sentence.words, tuple(tags), sentence.intent) if changed else sentence)
    if total:
        log.info("%s: repaired %d tag%s (an I- tag that opens an entity is read as B-)", source, total,
                 "" if total == 1 else "s")
    return repaired


# ---- ATIS/SNIPS folders ------------------------------------------------------------------------------------------


def read_seq_folder(folder: str | Path) -> dict[str, list[Sentence]]:
    """The splits of an ATIS/SNIPS folder: train (required), valid and test when present."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    found: dict[str, dict[str, Path]] = {}  # split -> field -> path

    def add(split: str, files: dict[str, Path]) -> None:
        if split in found:
            raise DataError(f"{found[split]['seq.in']} and {files['seq.in']} are both the {split} split; keep one")
        found[split] = files

    for path in sorted(folder.iterdir()):
        if path.is_file():
            field = next((f for f in SEQ_FIELDS if path.name.endswith("." + f)), "")
            prefix = path.name.removesuffix("." + field)
            if not field or not prefix:
                continue
            if field != "seq.in":
                if not (folder / f"{prefix}.seq.in").is_file():
                    raise DataError(f"{path}: no {prefix}.seq.in beside it")
                continue
            files = {f: folder / f"{prefix}.{f}" for f in SEQ_FIELDS}
        elif path.is_dir() and (path / "seq.in").is_file():
            prefix, files = path.name, {f: path / f for f in SEQ_FIELDS}
        else:
            continue
        if prefix not in SPLIT_NAMES:
            raise DataError(f"{files['seq.in']}: unknown split {prefix!r}; expected train, dev/valid, test")
        add(SPLIT_NAMES[prefix], files)
    if "train" not in found:
        raise DataError(f"{folder}: no train.seq.in (or train/seq.in); an ATIS/SNIPS folder has train, dev/valid and "
                        "test files .seq.in (words), .seq.out (tags) and optionally .label (intents)")
    with_labels = [s for s in SPLITS if s in found and found[s]["label"].is_file()]
    without = [s for s in SPLITS if s in found and s not in with_labels]
    if with_labels and without:
        raise DataError(f"{found[with_labels[0]]['label']} gives intents but {found[without[0]]['label']} does not "
                        "exist; give a .label file for every split or for none")
    return {split: _read_seq_split(found[split]) for split in SPLITS if split in found}


def _read_seq_split(files: dict[str, Path]) -> list[Sentence]:
    words_path, tags_path, label_path = files["seq.in"], files["seq.out"], files["label"]
    if not tags_path.is_file():
        raise DataError(f"{words_path}: no {tags_path.name} beside it with the tags")
    texts, tag_lines = _lines(words_path), _lines(tags_path)
    _same_length(words_path, texts, tags_path, tag_lines)
    intents: list[str | None] = [None] * len(texts)
    if label_path.is_file():
        labels = _lines(label_path)
        _same_length(words_path, texts, label_path, labels)
        for number, label in enumerate(labels, start=1):
            if not label.strip():
                raise DataError(f"{label_path}:{number}: empty label")
        intents = [label.strip() for label in labels]
    sentences = []
    for number, (text, tag_line, intent) in enumerate(zip(texts, tag_lines, intents, strict=True), start=1):
        words, tags = text.split(), tag_line.split()
        if not words:
            raise DataError(f"{words_path}:{number}: empty sentence")
        if len(words) != len(tags):
            raise DataError(f"{tags_path}:{number}: {len(words)} words but {len(tags)} tags")
        sentences.append(Sentence(tuple(words), tuple(tags), intent))
    return check_sentences(sentences, str(tags_path))


def _same_length(a: Path, a_lines: list[str], b: Path, b_lines: list[str]) -> None:
    if len(a_lines) != len(b_lines):
        raise DataError(f"{a} has {len(a_lines)} lines but {b} has {len(b_lines)}; aligned files need the same number")


# ---- CoNLL ---------------------------------------------------------------------------------------------------------


def read_conll(path: str | Path, tag_column: int = -1) -> list[Sentence]:
    """Sentences from a CoNLL file: a token a line (word in column 0, tag in `tag_column`), blank lines between."""
    path = Path(path)
    if tag_column == 0:
        raise DataError(f"{path}: the tag column cannot be 0, the word's column")
    needed = tag_column + 1 if tag_column > 0 else 1 - tag_column
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []

    def close() -> None:
        if words:
            sentences.append(Sentence(tuple(words), tuple(tags)))
            words.clear()
            tags.clear()

    for number, line in enumerate(_lines(path), start=1):
        columns = line.split()
        if not columns or columns[0].startswith("-DOCSTART-"):
            close()
            continue
        if len(columns) < needed:
            raise DataError(f"{path}:{number}: expected at least {needed} columns (word ... tag), found {len(columns)}")
        words.append(columns[0])
        tags.append(columns[tag_column])
    close()
    return check_sentences(sentences, str(path))


# ---- JSONL with character spans ------------------------------------------------------------------------------------


def read_tag_jsonl(path: str | Path) -> list[Sentence]:
    """Sentences from JSONL: {"text", "spans": [{"start", "end", "label"}], "intent"?}, offsets into the text."""
    path = Path(path)
    sentences = []
    first_line, first_has_intent = 0, False
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object")
        sentence = _json_sentence(obj, where)
        has_intent = sentence.intent is not None
        if not first_line:
            first_line, first_has_intent = number, has_intent
        elif has_intent != first_has_intent:
            which = ("has an intent but line {} has none" if has_intent else "has no intent but line {} has one")
            raise DataError(f"{where}: {which.format(first_line)}; give an intent on every line or on none")
        sentences.append(sentence)
    return check_sentences(sentences, str(path))


def _json_sentence(obj: dict[str, Any], where: str) -> Sentence:
    if "text" not in obj:
        raise DataError(f"{where}: no field 'text'")
    text = obj["text"]
    if not isinstance(text, str):
        raise DataError(f"{where}: field 'text' is {_kind(text)}; expected a string")
    if not text.strip():
        raise DataError(f"{where}: empty sentence")
    if "spans" not in obj:
        raise DataError(f"{where}: no field 'spans' (a list, [] when the text has no entities)")
    if not isinstance(obj["spans"], list):
        raise DataError(f"{where}: field 'spans' is {_kind(obj['spans'])}; expected a list")
    spans = sorted(_span(span, i, text, where) for i, span in enumerate(obj["spans"]))
    for (s1, e1, l1), (s2, e2, l2) in pairwise(spans):
        if s2 < e1:
            raise DataError(f"{where}: spans {l1!r} [{s1}, {e1}) and {l2!r} [{s2}, {e2}) overlap")
    intent = obj.get("intent")
    if "intent" in obj:
        if not isinstance(intent, str):
            raise DataError(f"{where}: field 'intent' is {_kind(intent)}; expected a string")
        if not intent.strip():
            raise DataError(f"{where}: empty intent")
        intent = intent.strip()
    words, tags = _words_and_tags(text, spans)
    return Sentence(words, tags, intent)


def _span(span: object, index: int, text: str, where: str) -> tuple[int, int, str]:
    name = f"span {index + 1}"
    if not isinstance(span, dict):
        raise DataError(f"{where}: {name} is {_kind(span)}; expected an object with start, end and label")
    missing = [f for f in ("start", "end", "label") if f not in span]
    if missing:
        raise DataError(f"{where}: {name} has no {', '.join(map(repr, missing))}")
    start, end, label = span["start"], span["end"], span["label"]
    for field, value in (("start", start), ("end", end)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise DataError(f"{where}: {name} {field!r} is {_kind(value)}; expected an integer character offset")
    if not isinstance(label, str) or not label.strip():
        raise DataError(f"{where}: {name} 'label' must be a non-empty string")
    if start >= end:
        raise DataError(f"{where}: {name} starts at {start} but ends at {end}; the end (exclusive) must be greater")
    if start < 0 or end > len(text):
        raise DataError(f"{where}: {name} [{start}, {end}) is out of range; the text has {len(text)} characters")
    if not _NOT_SPACE.search(text, start, end):
        raise DataError(f"{where}: {name} [{start}, {end}) covers only whitespace")
    return start, end, label.strip()


def _words_and_tags(text: str, spans: list[tuple[int, int, str]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The text's words, also cut at each span boundary inside a word, tagged B-/I- inside spans and O outside."""
    cuts = sorted({s for s, _, _ in spans} | {e for _, e, _ in spans})
    words: list[str] = []
    tags: list[str] = []
    opened: set[int] = set()
    for word in split_words(text):
        bounds = [word.start, *(c for c in cuts if word.start < c < word.end), word.end]
        for a, b in pairwise(bounds):
            inside = next((i for i, (s, e, _) in enumerate(spans) if s <= a < e), None)
            words.append(text[a:b])
            if inside is None:
                tags.append(OUTSIDE)
            else:
                tags.append(("I-" if inside in opened else "B-") + spans[inside][2])
                opened.add(inside)
    return tuple(words), tuple(tags)


def _kind(value: object) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


# ---- dispatch and the ATIS recipe ----------------------------------------------------------------------------------


def read_tagged(path: str | Path, tag_column: int = -1) -> list[Sentence] | dict[str, list[Sentence]]:
    """A folder (ATIS/SNIPS, its splits), a .jsonl[.gz] file or a CoNLL file (anything else)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_seq_folder(path)
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return read_tag_jsonl(path)
    return read_conll(path, tag_column)


def default_atis_dir() -> Path:
    """$SEQSERVE_ATIS_DIR, else ../shared/datasets/atis beside the project, else a user cache."""
    return default_data_dir("atis", ATIS_ENV)


def atis(data_dir: str | Path | None = None) -> dict[str, list[Sentence]]:
    """ATIS train, valid and test (JointBERT's copy): from `data_dir` or the default folder, downloading what lacks."""
    folder = Path(data_dir) if data_dir else default_atis_dir()
    if not (folder / "train" / "seq.in").is_file():  # JointBERT's own layout is read as it is
        for split in ATIS_SPLITS:
            for field in SEQ_FIELDS:
                _atis_file(folder, split, field)
    splits = read_seq_folder(folder)
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise DataError(f"{folder}: ATIS needs train, dev and test splits; missing {', '.join(missing)}")
    return splits


def _atis_file(folder: Path, split: str, field: str) -> Path:
    path = folder / f"{split}.{field}"
    if path.is_file():
        return path
    try:
        with urllib.request.urlopen(ATIS_URL.format(split=split, field=field), timeout=30) as resp:
            data = resp.read()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DataError(f"{path}: not found locally and could not be downloaded ({exc}); "
                        f"pass --data-dir or set {ATIS_ENV}") from None
    return path
