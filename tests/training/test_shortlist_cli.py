"""`seqserve shortlist` on a model version, the shortlist through int8 quantization, and its bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np

from service.engine.repository import read_config
from service.engine.translator import DecodeOptions, TranslatorRuntime
from tests.cli.test_errors import assert_one_line, cli  # noqa: F401
from tests.conftest import synthetic_pairs
from training.quantize import quantize_version


def test_shortlist_command_writes_the_list_and_graph_and_quantize_carries_them(cli, tmp_path,  # noqa: F811
                                                                               translator_version):
    version = shutil.copytree(translator_version, tmp_path / "numbers" / "1")
    code, _ = cli("shortlist", version, "--per-source", "5", "--frequent", "10")
    assert code == 0
    entry = read_config(version)["shortlist"]
    assert (version / entry["file"]).is_file() and (version / entry["graph"]).is_file()
    assert entry["method"] == "ibm-model-1" and entry["per_source"] == 5 and entry["frequent"] == 10
    assert entry["valid"]["token_coverage"] > 0.9 and entry["valid"]["mean_size"] < 100  # of 300 ids
    assert cli("evaluate", version, "--split", "test", "--beam-size", "2")[0] == 0
    assert json.loads((version / "metrics.json").read_text())["test"]["shortlist"] is True
    assert cli("evaluate", version, "--split", "valid", "--beam-size", "2", "--no-shortlist")[0] == 0
    assert json.loads((version / "metrics.json").read_text())["valid"]["shortlist"] is False
    int8 = quantize_version(version, version=2, out=tmp_path / "numbers", calibration_size=64)
    config = read_config(int8)
    assert config["shortlist"]["graph"] == entry["graph"] and (int8 / entry["graph"]).is_file()
    runtime = TranslatorRuntime(int8, config)
    assert runtime.shortlist is not None and runtime.runner.shortlist_decoder is not None
    texts = [src for src, _ in synthetic_pairs(20, seed=9)]
    seqs = runtime.encode(texts)
    for seq, t in zip(seqs, runtime.translate(texts, DecodeOptions(beam_size=1)), strict=True):
        assert set(t.target_ids) <= set(runtime.shortlist.for_sentence(seq).tolist())
    graph = (int8 / entry["graph"]).read_bytes()
    assert b"MatMulInteger" in graph  # the int8 output layer, its columns gathered
    full = [t.text for t in runtime.translate(texts, DecodeOptions(beam_size=1, shortlist=False))]
    assert np.mean([a == b.text for a, b in zip(full, runtime.translate(texts, DecodeOptions(beam_size=1)),
                                                 strict=True)]) > 0.8


def test_shortlist_bad_input_exits_2_with_one_line(cli, tmp_path, classifier_version, translator_version):  # noqa: F811
    assert_one_line(cli("shortlist", tmp_path / "nowhere"), "nowhere")
    classifier = shutil.copytree(classifier_version, tmp_path / "reviews" / "1")
    assert_one_line(cli("shortlist", classifier), "classifier", "translators")
    version = shutil.copytree(translator_version, tmp_path / "numbers" / "1")
    assert_one_line(cli("shortlist", version, "--per-source", "-1"), "--per-source")
    assert_one_line(cli("shortlist", version, "--min-prob", "1.5"), "--min-prob")
    assert_one_line(cli("shortlist", version, "--data", tmp_path / "missing.tsv"), "missing.tsv")
    assert "shortlist" not in json.loads((version / "config.json").read_text())
