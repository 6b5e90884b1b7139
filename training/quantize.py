"""int8 dynamic quantization of every graph in a model version, written as a new version with its own card,
library versions and (for classifiers whose data can be found again) metrics."""

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
from service.errors import UserError
from training.evaluate import evaluate_version, load_eval_data
from training.kinds import TOOLS
from training.repo_writer import VersionWriter, invocation, package_versions, stale_data

log = logging.getLogger("seqserve.quantize")
# onnxruntime's quantizer breaks an embedding that is shared with a MatMul (tied output layer): the Gather comes
# out with the transposed shape. Such graphs keep float embeddings and quantize the rest.
WITHOUT_GATHER = ["MatMul", "Gemm", "LSTM", "GRU"]
QUANTIZER_LIBRARIES = ("onnx", "onnxruntime")  # what rewrites the graphs; the rest of library_versions is training's
SPLITS = ("train", "valid", "test")  # metrics.json splits that the recorded data can give again


def quantize_version(model_dir: Path, version: int | None = None, out: Path | None = None) -> Path:
    """Quantize weights (embeddings, MatMul/Gemm, LSTM/GRU) to int8; activations stay float (dynamic)."""
    source = resolve_version_dir(model_dir)
    config = read_config(source)
    if config.get("quantization"):
        raise UserError(f"{source} is already quantized ({config['quantization']['method']})")
    out = out or source.parent
    number = version if version is not None else next_version(out)
    target = out / str(number)
    if target.resolve() == source.resolve():
        raise UserError(f"--version {number} is the source version itself")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in set(config["tokenizers"].values()):
        shutil.copyfile(source / name, target / name)
    config.update(
        name=out.resolve().name, version=number,  # named after the model folder it is written into
        quantization={"method": "dynamic int8 (onnxruntime)", "from_model": config.get("name", source.parent.name),
                      "from_version": int(source.name), "command": invocation(),
                      "created": datetime.now(UTC).isoformat(timespec="seconds")},
        library_versions={**config.get("library_versions", {}), **package_versions(QUANTIZER_LIBRARIES)},
    )
    _quantize_graphs(source, target, config)
    write_json(target / "config.json", config)
    evaluate_like_source(source, target, config)
    VersionWriter(target).write_card()
    return target


def _quantize_graphs(source: Path, target: Path, config: dict[str, Any]) -> None:
    """Every graph to int8; without the Gather (embeddings) when the fully quantized graphs do not run."""
    for graph in config["graphs"].values():
        quantize_dynamic(source / graph, target / graph, weight_type=QuantType.QInt8)
    if _runs(target, config):
        return
    log.warning("the fully quantized graphs do not run; keeping embeddings in float")
    for graph in config["graphs"].values():
        quantize_dynamic(source / graph, target / graph, weight_type=QuantType.QInt8,
                         op_types_to_quantize=WITHOUT_GATHER)
    config["quantization"]["ops"] = WITHOUT_GATHER
    if not _runs(target, config):
        raise RuntimeError(f"{target}: the quantized graphs do not run")


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
