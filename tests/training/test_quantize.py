"""`quantize_version` writes a complete int8 version: its own card, library versions and metrics (never fp32's)."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
from pathlib import Path

import pytest

from service.engine.repository import read_config, write_json
from service.errors import UserError
from training.quantize import quantize_version
from training.repo_writer import file_digest

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
    assert "int8 variant" in card and "static quantization" in card and "`reviews` version 1" in card
    calibration = int8["quantization"]["calibration"]
    assert calibration["source"] == f"train split of {config['provenance']['source']}" and calibration["texts"] > 100
    assert f"calibrated on {calibration['texts']} texts of train split of" in card
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

    with pytest.raises(UserError, match="pass --calibration-data FILE"):  # nothing to calibrate on
        quantize_version(source, version=7, out=tmp_path / "reviews-int8")
    texts = tmp_path / "texts.txt"
    texts.write_text("a great film\nbad acting\n\nwonderful and moving\n", "utf-8")
    with caplog.at_level(logging.INFO, logger="seqserve.quantize"):
        target = quantize_version(source, version=7, out=tmp_path / "reviews-int8", calibration=texts)

    assert target == tmp_path / "reviews-int8" / "7" and not (target / "metrics.json").exists()
    assert any("is missing" in r.getMessage() and "seqserve evaluate" in r.getMessage() for r in caplog.records)
    config = read_config(target)
    assert config["name"] == "reviews-int8"
    assert config["quantization"]["calibration"] == {"source": str(texts), "sha256": file_digest(texts), "texts": 3}
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


def test_int8_graphs_quantize_with_constant_scales_and_answer_the_same_alone_or_batched(
    classifier_version: Path, translator_version: Path, tmp_path: Path
) -> None:
    """No op of the int8 graphs quantizes over the batch; a text's scores are bit-identical alone or in a batch."""
    import numpy as np
    import onnx

    from service.engine.classifier import ClassifierRuntime
    from service.engine.translator import DecodeOptions, TranslatorRuntime
    from training.calibration import BATCH_DEPENDENT_OPS

    for name, version in (("reviews", classifier_version), ("numbers", translator_version)):
        target = quantize_version(version, version=1, out=tmp_path / name, calibration_size=64)
        config = read_config(target)
        assert config["quantization"]["method"] == "static int8 (onnxruntime)"
        assert config["quantization"]["calibration"]["texts"] == 64
        for graph in config["graphs"].values():
            ops = {n.op_type for n in onnx.load(str(target / graph)).graph.node}
            assert not ops & BATCH_DEPENDENT_OPS and "QuantizeLinear" in ops
            assert config["quantization"]["activation_ranges"][graph]
    texts = ["a great film", "bad acting and a dull plot that goes on", "wonderful", "two three four five six"]
    reviews = ClassifierRuntime(tmp_path / "reviews" / "1", read_config(tmp_path / "reviews" / "1"))
    batched = reviews.predict(texts)
    for text, row in zip(texts, batched, strict=True):
        np.testing.assert_array_equal(reviews.predict([text])[0], row)
    numbers = TranslatorRuntime(tmp_path / "numbers" / "1", read_config(tmp_path / "numbers" / "1"))
    together = numbers.translate(texts, DecodeOptions(beam_size=3))
    for text, translation in zip(texts, together, strict=True):
        (alone,) = numbers.translate([text], DecodeOptions(beam_size=3))
        assert alone.text == translation.text and alone.target_ids == translation.target_ids
        assert abs(alone.score - translation.score) <= 1e-5


def test_a_dynamic_int8_version_turns_back_into_the_floats_its_weights_stand_for(
    translator_version: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """training.dequantize (how the bundled en-de v2 was made from v1): quantizing the float version again gives
    back exactly the int8 weights it came from, and the float graphs have no integer op left."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from service.engine.translator import DecodeOptions, TranslatorRuntime
    from training.dequantize import dequantize_version

    dynamic = tmp_path / "dynamic" / "1"
    shutil.copytree(translator_version, dynamic)
    config = read_config(dynamic)
    for graph in config["graphs"].values():  # what `seqserve quantize` wrote before static scales
        quantize_dynamic(translator_version / graph, dynamic / graph, weight_type=QuantType.QInt8)
    write_json(dynamic / "config.json", {**config, "quantization": {"method": "dynamic int8 (onnxruntime)"}})
    from service.engine.kinds import load_runtime

    with caplog.at_level(logging.WARNING, logger="seqserve.engine"):  # such a version still loads, with a warning
        load_runtime(dynamic, read_config(dynamic))
    assert any("can change with the other texts batched with it" in r.getMessage() for r in caplog.records)

    floats = dequantize_version(dynamic, tmp_path / "float" / "1")
    again = tmp_path / "again"
    again.mkdir()

    def int8_weights(path: Path) -> dict[str, np.ndarray]:
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
                if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(i.dims)}

    for graph in config["graphs"].values():
        ops = {n.op_type for n in onnx.load(str(floats / graph)).graph.node}
        assert not ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DequantizeLinear"}
        quantize_dynamic(floats / graph, again / graph, weight_type=QuantType.QInt8)
        original, round_trip = int8_weights(dynamic / graph), int8_weights(again / graph)
        assert original.keys() == round_trip.keys() and original
        for name, weights in original.items():
            np.testing.assert_array_equal(round_trip[name], weights)
    assert read_config(floats)["dequantized_from"]["version"] == 1 and "quantization" not in read_config(floats)
    texts = [f"{a} {b} {c}" for a, b, c in zip(["one", "two", "six"], ["three", "nine", "four"], ["five"] * 3,
                                               strict=True)]
    rt = TranslatorRuntime(floats, read_config(floats))
    assert all(t.text for t in rt.translate(texts, DecodeOptions(beam_size=2)))
    with pytest.raises(UserError, match="not a dynamic int8 version"):
        dequantize_version(floats, tmp_path / "twice" / "1")


@pytest.mark.parametrize("cell", ["lstm", "jordan"])
def test_a_tagger_quantizes_with_its_crf_and_its_f1_cost(tagger_data: Path, tmp_path: Path, cell: str) -> None:
    """The int8 tagger keeps its CRF's scores, is evaluated on the recorded test split (its F1 cost is measured, not
    copied), has no op that quantizes over the batch (a Jordan encoder's Loop body included), and tags a text the
    same alone or batched."""
    import json

    import numpy as np
    import onnx

    from models.tagger import TaggerConfig
    from service.engine.tagger import TaggerRuntime
    from training.calibration import BATCH_DEPENDENT_OPS, op_types
    from training.job import run_job
    from training.loop import TrainConfig
    from training.tag import TaggedData, TaggerJob

    job = TaggerJob(data=TaggedData(str(tagger_data)), out=tmp_path / "repo" / "flights", work_dir=tmp_path / "run",
                    model=TaggerConfig(vocab_size=300, emb_dim=16, hidden=16, cell=cell),
                    train=TrainConfig(epochs=2, batch_size=16, lr=0.01, seed=3))
    source = run_job(job)
    assert source is not None
    target = quantize_version(source, version=1, out=tmp_path / "flights-int8", calibration_size=64)
    config = read_config(target)
    assert (target / config["files"]["crf"]).is_file()
    ops = op_types(onnx.load(str(target / "model.onnx")).graph)
    assert not ops & BATCH_DEPENDENT_OPS and "QuantizeLinear" in ops
    metrics = json.loads((target / "metrics.json").read_text())
    fp32 = json.loads((source / "metrics.json").read_text())
    assert set(metrics["test"]) == set(fp32["test"]) and 0 <= metrics["test"]["slot_f1"] <= 1
    runtime = TaggerRuntime(target, config)
    texts = ["show me flights from boston to new york", "to miami",
             "how much is a ticket from dallas to denver on monday"]
    together = runtime.tag_texts(texts)
    for text, result in zip(texts, together, strict=True):
        (alone,) = runtime.tag_texts([text])
        assert [t["tag"] for t in alone["tokens"]] == [t["tag"] for t in result["tokens"]]
        np.testing.assert_allclose([t["score"] for t in alone["tokens"]], [t["score"] for t in result["tokens"]],
                                   atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_recurrent_weights_stored_smaller_keep_answers_close_and_batch_invariant(
    translator_version: Path, tmp_path: Path, dtype: str
) -> None:
    import onnx

    from service.engine.translator import DecodeOptions, TranslatorRuntime

    full = quantize_version(translator_version, version=1, out=tmp_path / "full", calibration_size=64)
    half = quantize_version(translator_version, version=1, out=tmp_path / "half", calibration_size=64,
                            recurrent_weights=dtype)
    assert read_config(half)["quantization"]["recurrent_weights"] == dtype
    stored = onnx.TensorProto.FLOAT16 if dtype == "float16" else onnx.TensorProto.INT8
    for graph in read_config(half)["graphs"].values():
        model = onnx.load(str(half / graph))
        inits = {t.name: t for t in model.graph.initializer}
        lstms = [n for n in model.graph.node if n.op_type == "LSTM"]
        made = {n.output[0]: n for n in model.graph.node if n.op_type in ("Cast", "Mul")}
        assert lstms
        for node in lstms:  # W and R come through a Cast (and, for int8, a Mul by row scales) from the initializer
            for name in node.input[1:3]:
                step = made[name]
                if dtype == "int8":
                    assert step.op_type == "Mul" and step.input[1] in inits
                    step = made[step.input[0]]
                assert step.op_type == "Cast" and inits[step.input[0]].data_type == stored
        assert (half / graph).stat().st_size < (full / graph).stat().st_size
    texts = ["one two three", "seven", "four five six seven eight nine", "two two"]
    runtimes = [TranslatorRuntime(v, read_config(v)) for v in (full, half)]
    answers = [r.translate(texts, DecodeOptions(beam_size=3)) for r in runtimes]
    for text, translation in zip(texts, answers[1], strict=True):
        (alone,) = runtimes[1].translate([text], DecodeOptions(beam_size=3))
        assert alone.target_ids == translation.target_ids and abs(alone.score - translation.score) <= 1e-5
    same = sum(a.text == b.text for a, b in zip(*answers, strict=True))
    assert same >= len(texts) - 1  # float16-rounded weights barely move a translation
    with pytest.raises(UserError, match="--recurrent-weights"):
        quantize_version(translator_version, out=tmp_path / "bad", recurrent_weights="int4")


def test_shared_weights_store_each_tensor_once_beside_the_graphs_with_the_same_answers(
    translator_version: Path, tmp_path: Path
) -> None:
    import shutil as sh

    from service.engine.translator import DecodeOptions, TranslatorRuntime

    source = tmp_path / "src" / "numbers" / "1"
    sh.copytree(translator_version, source)
    apart = quantize_version(source, version=1, out=tmp_path / "apart", calibration_size=64)
    shared = quantize_version(source, version=1, out=tmp_path / "shared", calibration_size=64, shared_weights=True)
    config = read_config(shared)
    assert config["files"]["weights"] == "weights.bin" and config["quantization"]["shared_weights"] is True
    assert all((shared / g).stat().st_size < 50_000 for g in config["graphs"].values())  # weights are outside

    def size(folder: Path) -> int:
        return sum((folder / name).stat().st_size for name in [*config["graphs"].values(), "weights.bin"]
                   if (folder / name).is_file())

    assert size(shared) <= 1.01 * size(apart)  # alignment aside; tensors two graphs share count once (LM tests)
    texts = ["one two three", "seven", "four five six seven eight nine"]
    answers = [TranslatorRuntime(v, read_config(v)).translate(texts, DecodeOptions(beam_size=3))
               for v in (apart, shared)]
    assert [a.target_ids for a in answers[0]] == [a.target_ids for a in answers[1]]
    moved = tmp_path / "moved"
    sh.copytree(shared.parent, moved)  # the folder is self-contained
    assert [t.text for t in TranslatorRuntime(moved / "1", read_config(moved / "1")).translate(texts)] == [
        t.text for t in answers[1]]
