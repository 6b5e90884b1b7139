"""End to end through the console script: train, evaluate, quantize, export, resume, DDP, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.engine.classifier import ClassifierRuntime
from service.engine.repository import read_config
from tests.conftest import synthetic_reviews, write_csv

BIN = Path(sys.executable).parent
TINY = ["--epochs", "4", "--emb-dim", "16", "--hidden", "16", "--vocab-size", "300", "--batch-size", "16",
        "--lr", "0.01", "--seed", "7"]


def seqserve(*args, check=True, cwd=None, env=None):
    result = subprocess.run([str(BIN / "seqserve"), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                            env=env, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"seqserve {args} failed:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, reviews_csv):
    root = tmp_path_factory.mktemp("repo")
    seqserve("train", "classifier", "--data", reviews_csv, "--out", root / "reviews", "--work-dir", root / "run",
             *TINY)
    return root


def test_train_writes_a_complete_model_version(trained):
    version = trained / "reviews" / "1"
    for name in ("model.onnx", "tokenizer.json", "config.json", "metrics.json", "README.md", "curves.png"):
        assert (version / name).is_file(), name
    config = read_config(version)
    assert config["kind"] == "classifier" and config["labels"] == ["neg", "pos"]
    assert config["provenance"]["sha256"] and config["provenance"]["sizes"]["test"] == 60
    assert {"torch", "onnxruntime", "tokenizers"} <= set(config["library_versions"])
    assert [i["name"] for i in config["inputs"]] == ["ids", "lengths"]
    history = config["training"]["history"]
    assert all(epoch["grad_norm"] > 0 for epoch in history)  # the clipped gradient norm is logged
    metrics = json.loads((version / "metrics.json").read_text())["test"]
    assert metrics["accuracy"] >= 0.9
    assert metrics["confusion_matrix"]["labels"] == ["neg", "pos"] and set(metrics["per_class"]) == {"neg", "pos"}
    assert (trained / "run" / "best.safetensors").is_file() and (trained / "run" / "model.json").is_file()


def test_evaluate_reproduces_the_figures_from_onnx(trained):
    version = trained / "reviews" / "1"
    before = json.loads((version / "metrics.json").read_text())["test"]["accuracy"]
    seqserve("evaluate", trained / "reviews")
    assert json.loads((version / "metrics.json").read_text())["test"]["accuracy"] == before
    other = write_csv(trained / "other.csv", synthetic_reviews(40, seed=99))
    seqserve("evaluate", version, "--data", other, "--split", "fresh")
    assert json.loads((version / "metrics.json").read_text())["fresh"]["examples"] == 40


def test_quantize_writes_an_int8_version_that_still_classifies(trained):
    seqserve("quantize", trained / "reviews" / "1", "--version", "2")
    seqserve("evaluate", trained / "reviews" / "2")
    config = read_config(trained / "reviews" / "2")
    assert config["quantization"]["from_version"] == 1
    assert json.loads((trained / "reviews" / "2" / "metrics.json").read_text())["test"]["accuracy"] >= 0.85
    runtime = ClassifierRuntime(trained / "reviews" / "2", config)
    probs = runtime.predict(["the film is superb", "a dull movie"])
    assert probs.argmax(axis=1).tolist() == [1, 0]
    assert seqserve("quantize", trained / "reviews" / "2", check=False).returncode == 2


def test_export_from_a_run_folder(trained):
    seqserve("export", trained / "run", "--out", trained / "reviews", "--version", "5")
    version = trained / "reviews" / "5"
    assert ClassifierRuntime(version, read_config(version)).predict(["x"]).shape == (1, 2)


def test_resume_continues_from_the_last_epoch(trained, reviews_csv, tmp_path):
    run = tmp_path / "run"
    base = ["train", "classifier", "--data", reviews_csv, "--out", tmp_path / "m", "--work-dir", run, *TINY]
    seqserve(*[a if a != "4" else "2" for a in base])
    seqserve(*base, "--resume")
    history = read_config(tmp_path / "m" / "2")["training"]["history"]
    assert [e["epoch"] for e in history] == [1, 2, 3, 4]


def test_torchrun_two_processes_reach_the_same_quality(tmp_path, reviews_csv):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node=2", "--master_port=29517",
                             str(BIN / "seqserve"), "train", "classifier", "--data", reviews_csv, "--out",
                             tmp_path / "ddp", "--work-dir", tmp_path / "run", *TINY],
                            check=True, capture_output=True, text=True, env=env, timeout=300)
    accuracy = json.loads((tmp_path / "ddp" / "1" / "metrics.json").read_text())["test"]["accuracy"]
    assert accuracy >= 0.9
    history = read_config(tmp_path / "ddp" / "1")["training"]["history"]
    logged = [line for line in result.stderr.splitlines() if "seqserve.train: epoch " in line]
    assert len(logged) == len(history)  # progress lines come from rank 0 only


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "imdb_reviews"], "unknown recipe 'imdb_reviews'"),
        (["--data", "nothere/x.csv"], "x.csv: no such file"),
        (["--data", "{csv}", "--text-field", "review"], "no column 'review'"),
        (["--data", "{empty}"], "no labelled examples"),
        (["--data", "{single}"], "only one class"),
        (["--data", "{bytes}"], "bad.csv:3: bytes that are not UTF-8"),
        (["--data", "{csv}", "--epochs", "0"], "--epochs must be at least 1"),
        (["--data", "{csv}", "--vocab-size", "10"], "--vocab-size must be at least 260"),
        (["--data", "{csv}", "--cell", "transformer"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, reviews_csv, args, message):
    (tmp_path / "empty.csv").write_text("text,label\n", encoding="utf-8")
    (tmp_path / "single.csv").write_text("text,label\na,x\nb,x\n", encoding="utf-8")
    (tmp_path / "bad.csv").write_bytes(b"text,label\na,x\nb\xff,y\n")
    files = {"csv": reviews_csv, "empty": tmp_path / "empty.csv", "single": tmp_path / "single.csv",
             "bytes": tmp_path / "bad.csv"}
    args = [a.format(**files) for a in args]
    result = seqserve("train", "classifier", *args, "--out", tmp_path / "m", check=False, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr
