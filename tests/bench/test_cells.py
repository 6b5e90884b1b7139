"""bench.cells: one tagger per encoder cell, trained by the console script, side by side in one table."""

from __future__ import annotations

from pathlib import Path

from bench.cells import main


def test_cells_train_each_cell_and_tabulate_their_test_figures(tmp_path: Path, tagger_data: Path) -> None:
    report = tmp_path / "cells.md"
    assert main(["--data", str(tagger_data), "--cells", "rnn,jordan", "--out", str(tmp_path / "out"),
                 "--report", str(report), "--jobs", "2", "--", "--epochs", "2", "--emb-dim", "8", "--hidden", "8",
                 "--vocab-size", "300", "--batch-size", "32"]) == 0
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| Elman") or line.startswith("| Jordan")]
    assert len(rows) == 2
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert 0 <= float(cells[1]) <= 100 and 0 <= float(cells[2]) <= 100  # slot F1, intent accuracy
        assert cells[4].endswith("/ 2") and float(cells[5]) > 0  # epochs run, tokens/s
    assert (tmp_path / "out" / "models" / "tagger-jordan" / "1" / "model.onnx").is_file()
