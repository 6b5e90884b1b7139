"""`quantize_version` writes a complete int8 version: its own card, library versions and metrics (never fp32's)."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
from pathlib import Path

import pytest

from service.engine.repository import read_config, write_json
from training.quantize import quantize_version

FP32_FIGURES = {"test": {"accuracy": 0.123, "macro_f1": 0.123, "examples": 7}}  # not what the int8 graph scores


def fp32_copy(version: Path, root: Path, **config_changes: object) -> Path:
    """A copy of a model version as model `reviews` v1, with fp32 figures to tell apart and config changes."""
    target = root / "reviews" / "1"
    shutil.copytree(version, target)
    write_json(target / "metrics.json", FP32_FIGURES)
    write_json(target / "config.json", {**read_config(target), **config_changes})
    return target


def test_int8_version_has_its_own_card_library_versions_and_metrics(classifier_version: Path, tmp_path: Path) -> None:
    config = read_config(classifier_version)
    trained_with = {**config["library_versions"], "torch": "0.0.1-train", "onnx": "0.0.1", "onnxruntime": "0.0.1"}
    source = fp32_copy(classifier_version, tmp_path, library_versions=trained_with)

    target = quantize_version(source)

    assert target == tmp_path / "reviews" / "2"
    int8 = read_config(target)
    assert int8["quantization"]["from_version"] == 1 and int8["quantization"]["from_model"] == "reviews"
    assert int8["library_versions"]["torch"] == "0.0.1-train"  # training's versions stay
    for name in ("onnx", "onnxruntime"):  # the quantizer's are this environment's
        assert int8["library_versions"][name] == importlib.metadata.version(name)
    assert int8["provenance"] == config["provenance"]

    metrics = json.loads((target / "metrics.json").read_text())
    assert set(metrics) == {"test"}
    assert metrics["test"]["examples"] == config["provenance"]["sizes"]["test"]
    assert metrics["test"]["accuracy"] >= 0.85  # the int8 graph's own figure on the recorded test split

    card = (target / "README.md").read_text()
    assert card.startswith("# reviews v2 (classifier, int8)")
    assert "int8 variant" in card and "dynamic quantization" in card and "`reviews` version 1" in card
    fp32_card = (source / "README.md").read_text().splitlines()
    for prefix in ("- Data:", "- Made by:", "- Architecture:", "- Labels:"):  # the fp32 card's description stays
        assert [line for line in fp32_card if line.startswith(prefix)][0] in card
    assert f"accuracy': {round(metrics['test']['accuracy'], 4)}" in card and "0.123" not in card


def test_no_metrics_when_the_training_data_has_changed(
    classifier_version: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    provenance = read_config(classifier_version)["provenance"]
    data = tmp_path / "reviews.csv"
    shutil.copyfile(provenance["source"], data)
    moved = {**provenance, "source": str(data), "files": {str(data): provenance["sha256"]}}
    source = fp32_copy(classifier_version, tmp_path, provenance=moved)
    with data.open("a", encoding="utf-8") as fh:
        fh.write("an extra review,pos\n")

    with caplog.at_level(logging.INFO, logger="seqserve.quantize"):
        target = quantize_version(source)

    assert not (target / "metrics.json").exists()
    (line,) = [r.getMessage() for r in caplog.records if "seqserve evaluate" in r.getMessage()]
    assert "sha256 differs" in line and str(target) in line
    assert f"Not evaluated yet: run `seqserve evaluate {target}`" in (target / "README.md").read_text()


def test_no_metrics_when_the_training_data_is_gone(
    classifier_version: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    provenance = read_config(classifier_version)["provenance"]
    gone = str(tmp_path / "deleted.csv")
    source = fp32_copy(classifier_version, tmp_path,
                       provenance={**provenance, "source": gone, "files": {gone: provenance["sha256"]}})

    with caplog.at_level(logging.INFO, logger="seqserve.quantize"):
        target = quantize_version(source, version=7, out=tmp_path / "reviews-int8")

    assert target == tmp_path / "reviews-int8" / "7" and not (target / "metrics.json").exists()
    assert any("is missing" in r.getMessage() and "seqserve evaluate" in r.getMessage() for r in caplog.records)
    assert read_config(target)["name"] == "reviews-int8"
    assert "`reviews` version 1" in (target / "README.md").read_text()


def test_a_translator_is_left_for_seqserve_evaluate(
    translator_version: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "numbers" / "1"
    shutil.copytree(translator_version, source)
    assert (source / "metrics.json").is_file()

    with caplog.at_level(logging.INFO, logger="seqserve.quantize"):
        target = quantize_version(source)

    assert not (target / "metrics.json").exists()
    assert any("seqserve evaluate" in r.getMessage() for r in caplog.records)
    card = (target / "README.md").read_text()
    assert card.startswith("# numbers v2 (translator, int8)") and "`numbers` version 1" in card
