"""The language model through the console script: each data format, evaluation beside Kneser-Ney, float16 storage,
int8, and bad input (exit 2, one line)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.conftest import synthetic_sentences
from tests.training.test_train_cli import seqserve

TINY = ["--epochs", "2", "--emb-dim", "16", "--hidden", "24", "--dropout", "0.1", "--vocab-size", "300",
        "--batch-size", "32", "--lr", "0.01", "--max-length", "32"]


def write_data(path: Path, texts: list[str]) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress("\n".join(texts).encode()))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(texts)), "utf-8")
    else:
        path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")  # blank lines are skipped
    return path


@pytest.mark.parametrize(("name", "extra"), [("texts.txt.gz", ["--weights-dtype", "float16"]),
                                             ("posts.jsonl", ["--field", "body"])])
def test_train_and_evaluate_from_each_format(tmp_path: Path, name: str, extra: list[str]) -> None:
    data = write_data(tmp_path / name, synthetic_sentences(400, seed=8))
    seqserve("train", "lm", "--data", data, "--out", tmp_path / "repo" / "m", "--work-dir", tmp_path / "run",
             *TINY, *extra)
    version = tmp_path / "repo" / "m" / "1"
    config = json.loads((version / "config.json").read_text())
    assert config["kind"] == "lm" and config["files"] == {"weights": "weights.bin"}
    assert set(config["graphs"]) == {"prompt", "step"} and config["provenance"]["sizes"]["train"] == 360
    metrics = json.loads((version / "metrics.json").read_text())
    for split in ("valid", "test"):
        figures = metrics[split]
        assert figures["texts"] == 20 and figures["tokens"] > figures["words"] > 20
        assert 1 < figures["perplexity"] < 300 and figures["word_perplexity"] > figures["perplexity"]
        reference = figures["reference"]
        assert reference["order"] in (2, 3, 4) and reference["tokens"] == figures["tokens"]
        assert figures["perplexity_vs_reference"] == pytest.approx(figures["perplexity"] / reference["perplexity"])
    result = seqserve("evaluate", version, "--data", data, "--split", "all")
    assert json.loads((version / "metrics.json").read_text())["all"]["texts"] == 400, result.stderr
    if "float16" in extra:
        assert config["weights_dtype"] == "float16"
        refused = seqserve("quantize", tmp_path / "repo" / "m", check=False)
        assert refused.returncode == 2 and "float16" in refused.stderr
    else:
        seqserve("quantize", tmp_path / "repo" / "m", "--calibration-size", "32")
        int8 = json.loads((tmp_path / "repo" / "m" / "2" / "metrics.json").read_text())["test"]
        assert int8["perplexity"] == pytest.approx(metrics["test"]["perplexity"], rel=0.1)


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "wikitext"], "unknown recipe 'wikitext'"),
    (["--data", "multi30k", "--lang", "cs"], "multi30k has no language 'cs'"),
    (["--data", "{empty}"], "no texts"),
    (["--data", "{jsonl}", "--field", "text"], "no field 'text'"),
    (["--data", "{empty}", "--weights-dtype", "int4"], "--weights-dtype"),
    (["--data", "{empty}", "--cell", "transformer"], "--cell"),
])
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    (tmp_path / "d.jsonl").write_text('{"body": "a b"}\n', encoding="utf-8")
    args = [a.format(empty=tmp_path / "empty.txt", jsonl=tmp_path / "d.jsonl") for a in args]
    result = seqserve("train", "lm", *args, "--out", tmp_path / "out", *TINY, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
