"""User mistakes on `seqserve train/export/quantize`: exit code 2 and one line on stderr, found before any training."""

import os
import shutil
from pathlib import Path

import pytest

from cli.main import main
from tests.conftest import synthetic_pairs, synthetic_reviews, write_csv, write_tsv


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """`seqserve ARGS` in this process, as (exit code, stderr lines); default work dirs (runs/NAME) go to tmp_path."""
    monkeypatch.chdir(tmp_path)

    def run(*args):
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        return code, capsys.readouterr().err.strip().splitlines()

    return run


@pytest.fixture
def run_dir(tmp_path, classifier_version):
    """A copy of the tiny session classifier's training run (last.pt, model.json, tokenizer.json)."""
    return Path(shutil.copytree(classifier_version.parents[2] / "run", tmp_path / "run"))


def assert_one_line(result, *parts):
    code, lines = result
    assert code == 2 and len(lines) == 1, lines
    for part in parts:
        assert part in lines[0], lines[0]


def test_long_fields_are_read_and_bad_values_name_file_line_and_field(cli, tmp_path):
    rows = synthetic_reviews(40, seed=2)
    rows[0] = ("word " * 40_000, rows[0][1])  # 200,000 characters, past csv's default field limit
    long = write_csv(tmp_path / "long.csv", [*rows, ("a late row", "")])
    assert_one_line(cli("train", "classifier", "--data", long, "--out", tmp_path / "m"),
                    f"long.csv:{len(rows) + 2}: empty label")
    (tmp_path / "null.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n')
    assert_one_line(cli("train", "classifier", "--data", tmp_path / "null.jsonl", "--out", tmp_path / "m"),
                    "null.jsonl:2: field 'label' is null; expected a string or a number")
    (tmp_path / "cr.csv").write_text("text,label\na,x\nb\rc,y\n")
    assert_one_line(cli("train", "classifier", "--data", tmp_path / "cr.csv", "--out", tmp_path / "m"),
                    "cr.csv:3: malformed CSV")


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("classifier", ["--vocab-size", "10"], "--vocab-size must be at least 260, got 10"),
        ("classifier", ["--hidden", "0"], "--hidden must be at least 1, got 0"),
        ("classifier", ["--emb-dim", "-4"], "--emb-dim must be at least 1, got -4"),
        ("classifier", ["--dropout", "1"], "--dropout must be at least 0 and below 1, got 1.0"),
        ("classifier", ["--max-length", "0"], "--max-length must be at least 1, got 0"),
        ("classifier", ["--valid-fraction", "0.6", "--test-fraction", "0.4"],
         "--valid-fraction and --test-fraction add up to 1; they must stay below 1"),
        ("classifier", ["--test-fraction", "-0.1"], "--test-fraction must be at least 0 and below 1"),
        ("classifier", ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        ("classifier", ["--lr", "0"], "--lr must be above 0, got 0.0"),
        ("classifier", ["--clip", "-1"], "--clip must be above 0, got -1.0"),
        ("classifier", ["--version", "0"], "--version must be at least 1, got 0"),
        ("translator", ["--dec-hidden", "0"], "--dec-hidden must be at least 1, got 0"),
        ("translator", ["--layers", "0"], "--layers must be at least 1, got 0"),
        ("translator", ["--vocab-size", "100"], "--vocab-size must be at least 260, got 100"),
        ("translator", ["--label-smoothing", "1.5"], "--label-smoothing must be at least 0 and below 1"),
        ("translator", ["--tie-embeddings", "--emb-dim", "32", "--dec-hidden", "64"],
         "model options: tie_embeddings needs emb_dim == dec_hidden, got 32 and 64"),
        ("translator", ["--attention", "dot", "--hidden", "32", "--dec-hidden", "48"],
         "model options: dot attention needs dec_hidden == 2 * enc_hidden, got 48 and 32"),
        ("translator", ["--share-embeddings", "--separate-vocab"], "drop --separate-vocab"),
    ],
)
def test_bad_options_are_refused_before_any_work(cli, tmp_path, kind, options, message):
    data = (write_csv(tmp_path / "reviews.csv", synthetic_reviews(40, seed=1)) if kind == "classifier"
            else write_tsv(tmp_path / "pairs.tsv", synthetic_pairs(40, seed=1)))
    assert_one_line(cli("train", kind, "--data", data, "--out", tmp_path / "m", *options), message)
    assert not (tmp_path / "m").exists() and not (tmp_path / "runs").exists()


def test_folders_that_cannot_be_created(cli, tmp_path, reviews_csv, run_dir):
    (tmp_path / "file").write_text("")
    places = [tmp_path / "file" / "x"] + ([Path("/proc/seqserve/x")] if Path("/proc").is_dir() else [])
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o500)
    if not os.access(readonly, os.W_OK):  # root may write anywhere
        places.append(readonly / "x")
    for place in places:
        train = ["train", "classifier", "--data", reviews_csv]
        assert_one_line(cli(*train, "--out", place, "--work-dir", tmp_path / "w"), f"--out {place}: cannot create")
        assert_one_line(cli(*train, "--out", tmp_path / "m", "--work-dir", place), f"--work-dir {place}: cannot create")
        assert_one_line(cli("export", run_dir, "--out", place), f"--out {place}: cannot create the folder")


def test_resume_needs_a_checkpoint_and_the_same_model(cli, tmp_path, reviews_csv, run_dir):
    resume = ["train", "classifier", "--data", reviews_csv, "--out", tmp_path / "m", "--emb-dim", "16",
              "--vocab-size", "300", "--resume"]
    assert_one_line(cli(*resume, "--work-dir", tmp_path / "fresh"),
                    f"--resume: nothing to resume in {tmp_path / 'fresh'}")
    assert_one_line(cli(*resume, "--work-dir", run_dir, "--hidden", "32"),
                    f"options differ from the run being resumed in {run_dir}: hidden 32 (was 16)")
    (run_dir / "model.json").unlink()  # nothing to compare with: torch's shape check still becomes one line
    assert_one_line(cli(*resume, "--work-dir", run_dir, "--hidden", "32"),
                    "options differ from the run being resumed", "size mismatch")


def test_an_existing_version_is_replaced_only_with_overwrite(cli, tmp_path, reviews_csv, run_dir, classifier_version):
    out = tmp_path / "m"
    (out / "1").mkdir(parents=True)
    (out / "1" / "mine.txt").write_text("keep me")
    shutil.copytree(classifier_version, out / "2")
    refused = f"version 1 already exists in {out}; pass --overwrite to replace it"
    assert_one_line(cli("train", "classifier", "--data", reviews_csv, "--out", out, "--version", "1"), refused)
    assert_one_line(cli("train", "translator", "--data", "multi30k", "--out", out, "--version", "1"), refused)
    assert_one_line(cli("export", run_dir, "--out", out, "--version", "1"), refused)
    assert_one_line(cli("quantize", out / "2", "--version", "1"), refused)
    assert (out / "1" / "mine.txt").read_text() == "keep me"
    code, lines = cli("export", run_dir, "--out", out, "--version", "1", "--overwrite")
    assert code == 0, lines
    assert not (out / "1" / "mine.txt").exists() and (out / "1" / "model.onnx").is_file()
