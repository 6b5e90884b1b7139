"""Readers for labelled text (classification) and sentence pairs (translation), and splits.

Every problem a user can cause raises `DataError` with one line naming the file and, where it
applies, the line number; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import re
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from service.errors import UserError

if TYPE_CHECKING:
    from _csv import Reader


class DataError(UserError):
    """A problem with the user's data."""


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass(frozen=True)
class Pair:
    src: str
    tgt: str


T = TypeVar("T")


def read_text(path: str | Path) -> str:
    """The whole file as UTF-8 text (gzip if it ends in .gz); bad bytes are reported by line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: not a valid gzip file ({exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: bytes that are not UTF-8 ({exc.reason})") from None


def _format(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    fmt = suffixes[-1].lstrip(".").lower() if suffixes else ""
    if fmt not in ("csv", "tsv", "jsonl", "txt"):
        raise DataError(f"{path}: unknown format {fmt!r}; use .csv, .tsv or .jsonl (optionally .gz)")
    return fmt


def read_records(path: str | Path, fields: Sequence[str]) -> list[tuple[list[str], int]]:
    """Rows of `fields` with their line numbers from a CSV, TSV or JSONL file.

    Fields that are all digits are column indices and mean the table has no header row.
    """
    path = Path(path)
    fmt = _format(path)
    text = read_text(path)
    if fmt == "jsonl":
        return _jsonl_records(path, text, fields)
    if fmt == "txt":
        raise DataError(f"{path}: plain text has no fields; use .csv, .tsv or .jsonl")
    _allow_long_fields()
    # TSV has no quoting (IANA text/tab-separated-values): a cell that starts with " keeps its quotes.
    reader = (csv.reader(io.StringIO(text)) if fmt == "csv"
              else csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    try:
        return _table_records(path, reader, fields)
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed {fmt.upper()} ({exc})") from None


def _allow_long_fields() -> None:
    """Lift csv's 128 KiB field limit to the largest the platform's C long holds: long texts are fine."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def _table_records(path: Path, reader: Reader, fields: Sequence[str]) -> list[tuple[list[str], int]]:
    if all(f.isdigit() for f in fields):
        columns = [int(f) for f in fields]
    else:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty")
        missing = [f for f in fields if f not in header]
        if missing:
            raise DataError(f"{path}:1: no column {', '.join(map(repr, missing))}; columns are {header}")
        columns = [header.index(f) for f in fields]
    rows = []
    for row in reader:
        if not row or all(not cell.strip() for cell in row):
            continue
        if max(columns) >= len(row):
            raise DataError(f"{path}:{reader.line_num}: expected at least {max(columns) + 1} columns, "
                            f"found {len(row)}")
        rows.append(([row[c] for c in columns], reader.line_num))
    return rows


def _jsonl_records(path: Path, text: str, fields: Sequence[str]) -> list[tuple[list[str], int]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{number}: expected a JSON object")
        missing = [f for f in fields if f not in obj]
        if missing:
            raise DataError(f"{path}:{number}: no field {', '.join(map(repr, missing))}")
        rows.append(([_json_field(obj[f], f, f"{path}:{number}") for f in fields], number))
    return rows


JSON_TYPES = {type(None): "null", list: "a list", dict: "an object"}


def _json_field(value: object, name: str, where: str) -> str:
    """A JSONL field as text: strings as they are, numbers (and booleans) spelled out; anything else is an error."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    raise DataError(f"{where}: field {name!r} is {JSON_TYPES.get(type(value), type(value).__name__)}; "
                    "expected a string or a number")


def read_labelled(path: str | Path, text_field: str = "text", label_field: str = "label") -> list[Example]:
    """Labelled texts from a CSV, TSV or JSONL file."""
    examples = []
    for (text, label), number in read_records(path, [text_field, label_field]):
        if not label.strip():
            raise DataError(f"{path}:{number}: empty label")
        if text.strip():
            examples.append(Example(text, label.strip()))
    return check_labelled(examples, str(path))


def check_labelled(examples: list[Example], source: str) -> list[Example]:
    if not examples:
        raise DataError(f"{source}: no labelled examples")
    labels = {e.label for e in examples}
    if len(labels) < 2:
        raise DataError(f"{source}: only one class ({next(iter(labels))!r}); a classifier needs two or more")
    return examples


def read_parallel_files(src_path: str | Path, tgt_path: str | Path) -> list[Pair]:
    """Sentence pairs from two aligned text files, one sentence per line."""
    src = read_text(src_path).splitlines()
    tgt = read_text(tgt_path).splitlines()
    if len(src) != len(tgt):
        raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
                        "aligned files need the same number")
    return check_pairs([Pair(s, t) for s, t in zip(src, tgt, strict=True)], f"{src_path}, {tgt_path}")


def read_parallel_table(path: str | Path, src_field: str = "0", tgt_field: str = "1",
                        src_convert: Callable[[str], str] | None = None,
                        tgt_convert: Callable[[str], str] | None = None) -> list[Pair]:
    """Sentence pairs from TSV/CSV columns (extra columns ignored) or JSONL fields, each side through its
    converter (a script conversion, say). A side left empty (after NFKC, as the tokenizers normalise) names its
    file and line."""
    pairs = []
    for (src, tgt), line in read_records(path, [src_field, tgt_field]):
        texts = []
        for side, field, raw, convert in (("source", src_field, src, src_convert),
                                          ("target", tgt_field, tgt, tgt_convert)):
            text = convert(raw) if convert else raw
            if not _visible(text):
                raise DataError(f"{path}:{line}: the {side} side (field {field}) is empty"
                                + (" after normalisation" if raw.strip() else ""))
            texts.append(text)
        pairs.append(Pair(*texts))
    return check_pairs(pairs, str(path))


def _visible(text: str) -> bool:
    """Whether the text keeps a character after NFKC (as the tokenizers normalise), once whitespace and format
    characters (zero-width spaces and joiners, byte-order marks, soft hyphens) are set aside."""
    return any(not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in unicodedata.normalize("NFKC", text))


def check_pairs(pairs: list[Pair], source: str) -> list[Pair]:
    kept = [p for p in pairs if p.src.strip() and p.tgt.strip()]
    if not kept:
        raise DataError(f"{source}: no sentence pairs with both sides non-empty")
    return kept


_IDEOGRAPH = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")


def word_count(text: str) -> int:
    """Words for the length filters: space-separated words, each CJK ideograph counted as one (Chinese and
    Japanese are written without spaces)."""
    return len(_IDEOGRAPH.sub(" ", text).split()) + len(_IDEOGRAPH.findall(text)) or len(text)


def filter_pairs(pairs: list[Pair], max_words: int, max_ratio: float, source: str) -> list[Pair]:
    """Drop pairs longer than `max_words` on a side or whose length ratio exceeds `max_ratio`."""
    kept = []
    for p in pairs:
        ns, nt = word_count(p.src), word_count(p.tgt)
        if max(ns, nt) <= max_words and max(ns, nt) <= max_ratio * min(ns, nt):
            kept.append(p)
    if not kept:
        raise DataError(f"{source}: every pair was removed by the length filters "
                        f"(max {max_words} words, ratio {max_ratio}); loosen them")
    return kept


def stratified_split(examples: Sequence[Example], valid: float, test: float,
                     seed: int) -> tuple[list[Example], list[Example], list[Example]]:
    """Deterministic split that keeps each label's share in train, valid and test."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        by_label[e.label].append(e)
    rng = random.Random(seed)
    parts: tuple[list[Example], list[Example], list[Example]] = ([], [], [])
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        n_test, n_valid = round(len(group) * test), round(len(group) * valid)
        parts[2].extend(group[:n_test])
        parts[1].extend(group[n_test:n_test + n_valid])
        parts[0].extend(group[n_test + n_valid:])
    for part in parts:
        rng.shuffle(part)
    return parts


def random_split(items: Sequence[T], valid: float, test: float, seed: int) -> tuple[list[T], list[T], list[T]]:
    """Deterministic shuffled split into train, valid and test."""
    items = list(items)
    random.Random(seed).shuffle(items)
    n_test, n_valid = round(len(items) * test), round(len(items) * valid)
    return items[n_test + n_valid:], items[n_test:n_test + n_valid], items[:n_test]


def default_data_dir(name: str, env: str) -> Path:
    """A named data set's folder: $env, else ../shared/datasets/<name> beside the project, else a user cache."""
    if os.environ.get(env):
        return Path(os.environ[env])
    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets" / name
    if shared.is_dir():
        return shared
    return Path.home() / ".cache" / "seqserve" / name
