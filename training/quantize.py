"""int8 dynamic quantization of every graph in a model version, written as a new version."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from onnxruntime.quantization import QuantType, quantize_dynamic

from service.errors import UserError
from service.repository import next_version, read_config, resolve_version_dir, write_json

log = logging.getLogger("seqserve.quantize")
# onnxruntime's quantizer breaks an embedding that is shared with a MatMul (tied output layer): the Gather comes
# out with the transposed shape. Such graphs keep float embeddings and quantize the rest.
WITHOUT_GATHER = ["MatMul", "Gemm", "LSTM", "GRU"]


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
    config.update(name=out.resolve().name, version=number,  # named after the model folder it is written into
                  quantization={"method": "dynamic int8 (onnxruntime)", "from_version": int(source.name)})
    write_json(target / "config.json", config)
    for graph in config["graphs"].values():
        quantize_dynamic(source / graph, target / graph, weight_type=QuantType.QInt8)
    if not _runs(target, config):
        log.warning("the fully quantized graphs do not run; keeping embeddings in float")
        for graph in config["graphs"].values():
            quantize_dynamic(source / graph, target / graph, weight_type=QuantType.QInt8,
                             op_types_to_quantize=WITHOUT_GATHER)
        config["quantization"]["ops"] = WITHOUT_GATHER
        write_json(target / "config.json", config)
        if not _runs(target, config):
            raise RuntimeError(f"{target}: the quantized graphs do not run")
    return target


def _runs(version_dir: Path, config: dict[str, Any]) -> bool:
    """One real inference through the quantized graphs."""
    from service.runtime import ClassifierRuntime
    from service.translator import DecodeOptions, TranslatorRuntime

    try:
        if config["kind"] == "classifier":
            ClassifierRuntime(version_dir, config).predict(["a short check", "x"])
        else:
            TranslatorRuntime(version_dir, config).translate(["a short check", "x"], DecodeOptions(beam_size=2))
    except Exception as exc:  # onnxruntime raises its own types for invalid graphs
        log.info("quantized graphs failed a check run: %s", str(exc).splitlines()[0])
        return False
    return True
