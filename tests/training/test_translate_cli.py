"""Translator end to end through the console script, the Multi30k recipe, and parallel-data errors."""

import gzip
import json
from pathlib import Path

import pytest
import sacrebleu

from service.engine.repository import read_config
from service.engine.text import script_converter
from service.engine.translator import DecodeOptions, TranslatorRuntime
from tests.conftest import synthetic_pairs, write_tsv
from tests.training.test_train_cli import seqserve
from training.data import DataError, Pair, read_parallel_table
from training.recipes import default_multi30k_dir, multi30k
from training.translate import ParallelData

TINY = ["--epochs", "3", "--emb-dim", "32", "--hidden", "32", "--dec-hidden", "64", "--vocab-size", "300",
        "--batch-size", "32", "--lr", "0.01", "--seed", "5"]


@pytest.fixture(scope="module")
def translated(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt")
    data = write_tsv(root / "pairs.tsv", synthetic_pairs(900, seed=3))
    seqserve("train", "translator", "--data", data, "--out", root / "numbers", "--work-dir", root / "run", *TINY)
    return root


def test_train_translator_writes_two_graphs_tokenizers_and_bleu(translated):
    version = translated / "numbers" / "1"
    for name in ("encoder.onnx", "decoder.onnx", "source_tokenizer.json", "target_tokenizer.json", "config.json",
                 "metrics.json", "README.md", "curves.png"):
        assert (version / name).is_file(), name
    config = read_config(version)
    assert config["kind"] == "translator" and config["graphs"] == {"encoder": "encoder.onnx",
                                                                   "decoder": "decoder.onnx"}
    assert config["states"] == ["h", "c", "feed"] and "src_mask" in config["decoder"]["inputs"]
    assert all("valid_bleu_greedy" in epoch for epoch in config["training"]["history"])
    test = json.loads((version / "metrics.json").read_text())["test"]
    for key in ("bleu", "chrf", "greedy_bleu", "greedy_chrf"):
        assert 0.0 <= test[key] <= 100.0
    assert test["examples"] == 45 and test["bleu_signature"].startswith("nrefs:1")


def test_evaluate_with_beam_size_and_attention_plots(translated):
    version = translated / "numbers" / "1"
    seqserve("evaluate", version, "--beam-size", "1", "--plot-attention", "3")
    test = json.loads((version / "metrics.json").read_text())["test"]
    assert test["beam_size"] == 1 and test["bleu"] == pytest.approx(test["greedy_bleu"])  # beam 1 is greedy
    plots = sorted((version / "attention").glob("*.png"))
    assert len(plots) == 3 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)


def test_no_attention_baseline_and_int8_variant(translated, tmp_path):
    data = write_tsv(tmp_path / "pairs.tsv", synthetic_pairs(600, seed=4))
    seqserve("train", "translator", "--data", data, "--out", tmp_path / "base", "--work-dir", tmp_path / "run",
             "--attention", "none", "--no-input-feeding", *TINY)
    config = read_config(tmp_path / "base" / "1")
    assert "attention" not in config["decoder"]["outputs"] and "context" in config["states"]
    seqserve("quantize", translated / "numbers" / "1", "--version", "2")
    for number in ("1", "2"):  # fp32 and int8, the same test split and beam
        seqserve("evaluate", translated / "numbers" / number, "--beam-size", "2")
    fp32, int8 = (json.loads((translated / "numbers" / n / "metrics.json").read_text())["test"] for n in "12")
    assert int8["bleu"] >= fp32["bleu"] - 5 and int8["chrf"] >= fp32["chrf"] - 5  # int8 keeps the quality
    # and the fp32 model's behaviour on texts it was not calibrated on
    sources = [s for s, _ in synthetic_pairs(60, seed=11)]
    runtimes = [TranslatorRuntime(translated / "numbers" / n, read_config(translated / "numbers" / n)) for n in "12"]
    outputs = [[rt.translate([text], DecodeOptions(beam_size=2))[0].text for text in sources] for rt in runtimes]
    agreement = sacrebleu.corpus_chrf(outputs[1], [outputs[0]]).score
    same = sum(a == b for a, b in zip(*outputs, strict=True)) / len(sources)
    print(f"tiny translator, beam 2: BLEU fp32 {fp32['bleu']:.1f} int8 {int8['bleu']:.1f}; int8 against fp32: "
          f"chrF {agreement:.1f}, {same:.0%} identical")
    assert agreement >= 90 and same >= 0.8  # a broken quantization gives other words (chrF far below 90)
    assert read_config(translated / "numbers" / "2")["quantization"]["from_version"] == 1
    seqserve("quantize", translated / "numbers" / "1", "--out", tmp_path / "numbers-int8", "--version", "1")
    assert read_config(tmp_path / "numbers-int8" / "1")["name"] == "numbers-int8"


def test_step_graph_picks_candidates_and_its_output_layer_quantizes(translated, tmp_path):
    """The decoder ends in a TopK, and its output layer is a MatMul (int8 after quantize), not a float Gemm."""
    import onnx

    def ops(version_dir: Path) -> list[str]:
        return [n.op_type for n in onnx.load(str(version_dir / "decoder.onnx")).graph.node]

    seqserve("quantize", translated / "numbers" / "1", "--out", tmp_path / "int8", "--version", "1")
    fp32, int8 = ops(translated / "numbers" / "1"), ops(tmp_path / "int8" / "1")
    assert "TopK" in fp32 and "Gemm" not in fp32
    assert "TopK" in int8 and "MatMulInteger" in int8 and "Gemm" not in int8, " ".join(sorted(set(int8)))


def test_multi30k_recipe_reads_the_local_copy():
    if not (default_multi30k_dir() / "train.en.gz").is_file():
        pytest.fail(f"Multi30k not found at {default_multi30k_dir()}; set SEQSERVE_MULTI30K_DIR")
    assert len(multi30k("en", "de", "val")) == 1014
    test = multi30k("de", "fr", "test2016")
    assert len(test) == 1000 and test[0].src and test[0].tgt


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"source": "multi30k", "pair": "en-xx"}, "multi30k has no language 'xx'"),
    ({"source": "multi30k", "pair": "en-en"}, "two different languages"),
    ({"source": "multi30k", "pair": "english"}, "--pair must look like en-de"),
    ({"source": "wmt14"}, "unknown recipe 'wmt14'"),
])
def test_parallel_data_errors(kwargs, message):
    with pytest.raises(DataError, match=message):
        ParallelData(**kwargs).load()


def test_misaligned_empty_and_filtered_out_files_fail_with_one_line(tmp_path):
    with gzip.open(tmp_path / "a.en.gz", "wt") as fh:
        fh.write("one\ntwo\nthree\n")
    (tmp_path / "a.de").write_text("eins\nzwei\n", encoding="utf-8")
    (tmp_path / "long.tsv").write_text("one two three four five six\teins\n" * 30, encoding="utf-8")
    (tmp_path / "empty.tsv").write_text("", encoding="utf-8")
    cases = [
        (["--data", tmp_path / "a.en.gz", "--target-data", tmp_path / "a.de"], "has 3 lines but"),
        (["--data", tmp_path / "empty.tsv"], "no sentence pairs"),
        (["--data", tmp_path / "long.tsv", "--max-ratio", "2"], "removed by the length filters"),
        (["--data", "multi30k", "--pair", "en-zh"], "multi30k has no language 'zh'"),
        (["--data", "multi30k", "--cell", "rnn"], "translators use --cell lstm or --cell gru"),
    ]
    for args, message in cases:
        result = seqserve("train", "translator", *args, "--out", tmp_path / "m", check=False, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (args, result.stderr[-500:])


def test_tsv_columns_by_index_or_name_with_script_conversion_and_quotes_kept(tmp_path):
    """Tatoeba's layout (English, Chinese, attribution): either side by index, traditional characters made
    simplified, and quotes kept as text (TSV has no quoting)."""
    rows = ['"Look," she said.\t“看啊！” 她說道。\tCC-BY #1', "Welcome to Beijing.\t歡迎來北京。\tCC-BY #2",
            "Thank you.\t谢谢。\tCC-BY #3"]
    (tmp_path / "pairs.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    pairs = read_parallel_table(tmp_path / "pairs.tsv", "1", "0", script_converter("t2s"))
    assert sorted((p.src, p.tgt) for p in pairs) == sorted([("“看啊！” 她说道。", '"Look," she said.'),
                                                            ("欢迎来北京。", "Welcome to Beijing."),
                                                            ("谢谢。", "Thank you.")])
    (tmp_path / "named.tsv").write_text("en\tzh\n" + "\n".join(rows[1:]) + "\n", encoding="utf-8")
    named = read_parallel_table(tmp_path / "named.tsv", "zh", "en")
    assert sorted(p.src for p in named) == ["歡迎來北京。", "谢谢。"]  # no conversion asked for


def test_held_out_pair_counts_are_fixed_by_the_seed(tmp_path):
    data = write_tsv(tmp_path / "pairs.tsv", synthetic_pairs(300, seed=1))
    first = ParallelData(str(data), valid_pairs=20, test_pairs=50, seed=3).load()
    again = ParallelData(str(data), valid_pairs=20, test_pairs=50, seed=3).load()
    assert (len(first[1]), len(first[2])) == (20, 50) and first == again
    assert ParallelData(str(data), valid_pairs=20, test_pairs=50, seed=4).load()[2] != first[2]


def test_bad_tsv_columns_and_empty_sides_exit_2_naming_the_file_and_line(tmp_path):
    (tmp_path / "zh.tsv").write_text("Hi.\t嗨。\tx\nRun.\t\u200b \tx\nBye.\t再见。\tx\n", encoding="utf-8")
    (tmp_path / "short.tsv").write_text("Hi.\t嗨。\nRun.\n", encoding="utf-8")
    (tmp_path / "head.tsv").write_text("en\tzh\nHi.\t嗨。\n", encoding="utf-8")
    cases = [
        (["--data", tmp_path / "zh.tsv", "--src-field", "1", "--tgt-field", "0"],
         "zh.tsv:2: the source side (field 1) is empty after normalisation"),
        (["--data", tmp_path / "zh.tsv", "--src-field", "1", "--tgt-field", "5"], "zh.tsv:1: expected at least 6"),
        (["--data", tmp_path / "short.tsv"], "short.tsv:2: expected at least 2 columns, found 1"),
        (["--data", tmp_path / "head.tsv", "--src-field", "zh", "--tgt-field", "fr"], "head.tsv:1: no column 'fr'"),
        (["--data", tmp_path / "zh.tsv", "--src-script", "t2x"], "invalid choice: 't2x'"),
        (["--data", tmp_path / "head.tsv", "--test-pairs", "1", "--valid-pairs", "1", "--src-field", "zh",
          "--tgt-field", "en"], "leave none to train on"),
    ]
    for args, message in cases:
        result = seqserve("train", "translator", *args, "--out", tmp_path / "m", check=False, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (args, result.stderr[-500:])


def test_cc_cedict_entries_join_the_training_pairs_only(tmp_path):
    from training.lexicon import first_gloss, lexicon_pairs

    train = [Pair("我是在北京学的中文。", "It was in Beijing that I studied Chinese."),
             Pair("欢迎回家。", "Welcome home.")]
    pairs = {p.src: p.tgt for p in lexicon_pairs("cc-cedict", train, ("zh", "en"))}
    assert pairs["北京"] == "Beijing" and pairs["中文"] == "Chinese language" and pairs["欢迎"] == "welcome"
    assert pairs["伦敦"] == "London"  # a proper noun the corpus lacks
    assert all(len(src) >= 2 and 1 <= len(tgt.split()) <= 3 for src, tgt in pairs.items())
    reverse = lexicon_pairs("cc-cedict", [Pair(p.tgt, p.src) for p in train], ("en", "zh"))
    assert Pair("Beijing", "北京") in reverse
    assert first_gloss(["variant of 們|们", "(coll.) grub", "to eat; to dine"], 3) == "eat"  # no notes, no "to"
    assert first_gloss(["CL:個|个[ge4]"], 3) is None
    with pytest.raises(DataError, match="Chinese-English"):
        lexicon_pairs("cc-cedict", train, ("en", "de"))
    data = write_tsv(tmp_path / "pairs.tsv", [("北京很大。", "Beijing is big.")] * 40)
    split = ParallelData(str(data), pair="zh-en", lexicon="cc-cedict", test_pairs=5, valid_pairs=5).load()
    assert len(split[0]) > 1000 and len(split[1]) == len(split[2]) == 5  # only training gets the entries
