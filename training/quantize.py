"""int8 quantization of every graph in a model version, written as a new version with its own card, library
versions and (for classifiers whose data can be found again) metrics.

Weights are int8 (onnxruntime's quantizer); activations are quantized with scales calibrated on training texts
(`training.calibration`), never per batch, so a text gets the same answer alone or in any batch."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from onnxruntime.quantization import QuantType, quantize_dynamic

from service.engine.kinds import load_runtime
from service.engine.repository import next_version, read_config, resolve_version_dir, write_json
from service.engine.shortlist import describe as shortlist_entry
from service.errors import UserError
from training.calibration import fix_activation_scales, sample_texts
from training.evaluate import evaluate_version, load_eval_data
from training.kinds import TOOLS
from training.lm_export import WEIGHTS, share_initializers
from training.repo_writer import VersionWriter, file_digest, invocation, new_version_from, package_versions, stale_data
from training.shortlist import add_shortlist_graph

log = logging.getLogger("seqserve.quantize")
# What gets int8 weights. Recurrent ops (LSTM, GRU) stay in float: onnxruntime's only int8 LSTM,
# DynamicQuantizeLSTM, quantizes its inputs with one scale over the batch.
QUANTIZED_OPS = ["MatMul", "Gather"]
# onnxruntime's quantizer breaks an embedding that is shared with a MatMul (tied output layer): the Gather comes
# out with the transposed shape. Such graphs keep float embeddings and quantize the rest.
WITHOUT_GATHER = ["MatMul"]
CALIBRATION_SIZE = 512  # texts; activation ranges settle well before (Multi30k en-de: the same BLEU from 256)
RECURRENT_OPS = ("LSTM", "GRU", "RNN")  # their W, R and B inputs may be stored as float16 (--recurrent-weights)
RECURRENT_DTYPES = ("float32", "float16", "int8")
QUANTIZER_LIBRARIES = ("onnx", "onnxruntime")  # what rewrites the graphs; the rest of library_versions is training's
SPLITS = ("train", "valid", "test")  # metrics.json splits that the recorded data can give again


def quantize_version(model_dir: Path, version: int | None = None, out: Path | None = None,
                     calibration: Path | None = None, calibration_size: int | None = None,
                     recurrent_weights: str = "float32", shared_weights: bool = False) -> Path:
    """int8 weights for embeddings and MatMuls, activation scales calibrated on `calibration_size` texts: those of
    the `calibration` file (one per line), or else of the training split the source version records.
    `recurrent_weights` float16 stores the float LSTM/GRU weights at half size, int8 at a quarter (weight-only:
    computed in float either way); `shared_weights` stores the graphs' weights in one file beside them, each distinct
    tensor once (a translator's shared embeddings, say)."""
    if recurrent_weights not in RECURRENT_DTYPES:
        raise UserError(f"--recurrent-weights must be one of {', '.join(RECURRENT_DTYPES)}, got {recurrent_weights!r}")
    source = resolve_version_dir(model_dir)
    config = read_config(source)
    if config.get("quantization"):
        raise UserError(f"{source} is already quantized ({config['quantization']['method']})")
    if config.get("weights_dtype", "float32") != "float32":
        raise UserError(f"{source} stores its weights as {config['weights_dtype']}; quantize a version exported with "
                        "float32 weights")
    calibration_size = CALIBRATION_SIZE if calibration_size is None else calibration_size
    if calibration_size < 1:
        raise UserError(f"--calibration-size must be at least 1, got {calibration_size}")
    texts, calibrated_on = calibration_texts(config, calibration)
    texts = sample_texts(texts, calibration_size)
    out = out or source.parent
    number = version if version is not None else next_version(out)
    target = out / str(number)
    if target.resolve() == source.resolve():
        raise UserError(f"--version {number} is the source version itself")
    new_version_from(source, target, config)
    config.update(
        name=out.resolve().name, version=number,  # named after the model folder it is written into
        quantization={"method": "static int8 (onnxruntime)", "from_model": config.get("name", source.parent.name),
                      "from_version": int(source.name), "command": invocation(),
                      "created": datetime.now(UTC).isoformat(timespec="seconds"),
                      "calibration": {**calibrated_on, "texts": len(texts)},
                      "recurrent_weights": recurrent_weights, "shared_weights": shared_weights},
        library_versions={**config.get("library_versions", {}), **package_versions(QUANTIZER_LIBRARIES)},
    )
    feeds = TOOLS[config["kind"]].calibration_feeds(source, read_config(source), texts)
    _quantize_graphs(source, target, config, feeds, recurrent_weights)
    if shared_weights:
        if (config.get("files") or {}).get("weights"):
            raise UserError(f"{source} already keeps its weights in {config['files']['weights']}")
        entry = shortlist_entry(config)
        share_initializers([target / graph for graph in [*config["graphs"].values(), *([entry["graph"]] if entry
                                                                                      else [])]])
        config["files"] = {**(config.get("files") or {}), "weights": WEIGHTS}
        if not _runs(target, config):
            raise RuntimeError(f"{target}: the graphs do not run with their weights in {WEIGHTS}")
    write_json(target / "config.json", config)
    evaluate_like_source(source, target, config)
    VersionWriter(target).write_card()
    return target


def calibration_texts(config: dict[str, Any], path: Path | None) -> tuple[list[str], dict[str, Any]]:
    """The texts to calibrate on and where they came from (for config.json)."""
    if path is not None:
        try:
            texts = [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read the calibration texts {path}: {exc}") from exc
        if not texts:
            raise UserError(f"{path} has no calibration texts (one text per line)")
        return texts, {"source": str(path), "sha256": file_digest(path)}
    tools = TOOLS[config["kind"]]
    source = config.get("provenance", {}).get("source")
    try:
        examples = load_eval_data(config, SimpleNamespace(data=None, split="train"))
    except (UserError, OSError, ValueError) as exc:
        raise UserError(f"cannot load the training data the model records ({source}: {exc}); pass "
                        "--calibration-data FILE, one text per line") from exc
    texts = [tools.input_text(example) for example in examples]
    if not texts:
        raise UserError(f"the training split of {source} is empty; pass --calibration-data FILE")
    return texts, {"source": f"train split of {source}"}


def _quantize_graphs(source: Path, target: Path, config: dict[str, Any], feeds: dict[str, list[Any]],
                     recurrent_weights: str = "float32") -> None:
    """Every graph to int8 with static activation scales; without the Gather (embeddings) when the fully quantized
    graphs do not run."""
    ranges: dict[str, Any] = {}
    for ops in (QUANTIZED_OPS, WITHOUT_GATHER):
        for key, graph in config["graphs"].items():
            quantize_dynamic(source / graph, target / graph, weight_type=QuantType.QInt8, op_types_to_quantize=ops)
            ranges[graph] = fix_activation_scales(target / graph, source / graph, feeds[key])
            if recurrent_weights != "float32":
                store_recurrent_weights(target / graph, recurrent_weights)
        carry_shortlist(source, target, config)
        config["quantization"].update(ops=ops, activation_ranges=ranges)
        if _runs(target, config):
            return
        if ops is QUANTIZED_OPS:
            log.warning("the fully quantized graphs do not run; keeping embeddings in float")
    raise RuntimeError(f"{target}: the quantized graphs do not run")


def carry_shortlist(source: Path, target: Path, config: dict[str, Any]) -> None:
    """A translator's shortlist goes with it, its step graph made again from the int8 step graph."""
    entry = shortlist_entry(config)
    if entry is None:
        return
    shutil.copyfile(source / entry["file"], target / entry["file"])
    add_shortlist_graph(target / config["graphs"]["decoder"], target / entry["graph"])


def store_recurrent_weights(path: Path, dtype: str) -> int:
    """The weight and recurrence (and, for float16, bias) initializers of every LSTM, GRU and RNN node stored as
    `dtype`, read back through constant ops that onnxruntime folds when the session loads: float16 through a Cast;
    int8 (symmetric, one scale per gate row, weight-only) through a Cast and a Mul by the row scales. The graph
    computes in float as before, on the rounded weights, so answers stay independent of the batch. Returns how many
    tensors were stored so."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    initializers = {t.name: t for t in model.graph.initializer}
    inputs = slice(1, 4) if dtype == "float16" else slice(1, 3)  # int8: W and R; the small bias stays float
    wanted = {name for node in model.graph.node if node.op_type in RECURRENT_OPS for name in node.input[inputs]
              if name in initializers and initializers[name].data_type == onnx.TensorProto.FLOAT}
    casts = []
    for name in sorted(wanted):
        tensor = initializers[name]
        weights = numpy_helper.to_array(tensor)
        if dtype == "float16":
            tensor.CopyFrom(numpy_helper.from_array(weights.astype(np.float16), f"{name}.float16"))
            casts.append(helper.make_node("Cast", [tensor.name], [name], to=onnx.TensorProto.FLOAT,
                                          name=f"{name}.to_float"))
            continue
        scale = np.abs(weights).max(axis=-1, keepdims=True) / 127.0  # (directions, gate rows, 1)
        scale[scale == 0] = 1.0
        tensor.CopyFrom(numpy_helper.from_array(np.clip(np.round(weights / scale), -127, 127).astype(np.int8),
                                                f"{name}.int8"))
        model.graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), f"{name}.scale"))
        casts += [helper.make_node("Cast", [tensor.name], [f"{name}.unscaled"], to=onnx.TensorProto.FLOAT,
                                   name=f"{name}.to_float"),
                  helper.make_node("Mul", [f"{name}.unscaled", f"{name}.scale"], [name], name=f"{name}.rescale")]
    nodes = [*casts, *model.graph.node]
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))
    return len(casts)


def evaluate_like_source(source: Path, target: Path, config: dict[str, Any]) -> None:
    """metrics.json for the int8 version on the splits the source has figures for, never copied from fp32.

    Only kinds whose evaluation is cheap (`evaluate_after_quantize`), and only when the recorded training data
    can be loaded again unchanged; otherwise one line says to run `seqserve evaluate`.
    """
    path = source / "metrics.json"
    if not path.is_file():
        return
    hint = f"run `seqserve evaluate {target}` for the int8 version's figures"
    if not TOOLS[config["kind"]].evaluate_after_quantize:  # e.g. beam search over a test set: left to the user
        log.info("%s: not evaluated; %s", target, hint)
        return
    recorded = json.loads(path.read_text())
    others = [split for split in recorded if split not in SPLITS]
    if others:  # figures from `seqserve evaluate --data FILE`: that file was not recorded
        log.info("%s: no figures for %s (data given to `seqserve evaluate`); run `seqserve evaluate %s --data FILE "
                 "--split NAME` for them", target, ", ".join(others), target)
    splits = [split for split in recorded if split in SPLITS]
    reason = stale_data(config.get("provenance", {}))
    if reason and splits:
        log.info("%s: not evaluated (%s); %s", target, reason, hint)
        return
    for split in splits:
        args = SimpleNamespace(data=None, split=split)  # the recorded data, as `seqserve evaluate` loads it
        try:
            figures = evaluate_version(target, load_eval_data(config, args), split)
        except UserError as exc:  # e.g. a recipe whose package is gone, or labels the model does not know
            log.info("%s: not evaluated (%s); %s", target, exc, hint)
            return
        summary = {k: round(v, 4) for k, v in figures.items() if isinstance(v, int | float)}
        log.info("%s %s: %s", target, split, json.dumps(summary))


def _runs(version_dir: Path, config: dict[str, Any]) -> bool:
    """One real inference through the quantized graphs."""
    try:
        load_runtime(version_dir, config).smoke_test()
    except Exception as exc:  # onnxruntime raises its own types for invalid graphs
        log.info("quantized graphs failed a check run: %s", str(exc).splitlines()[0])
        return False
    return True
