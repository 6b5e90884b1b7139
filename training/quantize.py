"""int8 dynamic quantization of every graph in a model version, written as a new version."""

from __future__ import annotations

import shutil
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic

from service.errors import UserError
from service.repository import next_version, read_config, resolve_version_dir, write_json


def quantize_version(model_dir: Path, version: int | None = None) -> Path:
    """Quantize weights of MatMul/Gemm/LSTM/GRU nodes to int8; activations stay float (dynamic)."""
    source = resolve_version_dir(model_dir)
    config = read_config(source)
    if config.get("quantization"):
        raise UserError(f"{source} is already quantized ({config['quantization']['method']})")
    number = version if version is not None else next_version(source.parent)
    target = source.parent / str(number)
    if target.resolve() == source.resolve():
        raise UserError(f"--version {number} is the source version itself")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    for graph in config["graphs"].values():
        quantize_dynamic(source / graph, target / graph, weight_type=QuantType.QInt8)
    for name in set(config["tokenizers"].values()):
        shutil.copyfile(source / name, target / name)
    config.update(version=number, quantization={"method": "dynamic int8 (onnxruntime)",
                                                "from_version": int(source.name)})
    write_json(target / "config.json", config)
    return target
