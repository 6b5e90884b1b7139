"""A float version from a dynamic-int8 one (onnxruntime's `quantize_dynamic` output): each int8 weight becomes the
float it stands for, and the ops that quantized activations per batch become their float ops again.

For re-quantizing an int8 model whose float run is gone (the bundled en-de v1): the float version computes what
the int8 weights say, without the batch-dependent activation scales, and `seqserve quantize` can calibrate it.

    python -m training.dequantize model_repository/en-de/1 runs/en-de-float/1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from service.engine.repository import read_config, write_json
from service.errors import UserError
from training.repo_writer import new_version_from

LSTM_SCALES = slice(8, 12)  # DynamicQuantizeLSTM's W_scale, W_zero_point, R_scale, R_zero_point inputs


def _dequantized(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis0: bool = False) -> np.ndarray:
    scale = np.asarray(scale, np.float32)
    zero_point = np.asarray(zero_point, np.float32)
    if axis0 and scale.ndim == 1 and scale.size == q.shape[0]:  # one scale per direction
        shape = (q.shape[0], *([1] * (q.ndim - 1)))
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)


def dequantize_graph(source: Path, target: Path) -> None:
    model = onnx.load(str(source))
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    dropped: set[int] = set()
    replaced: dict[int, Any] = {}
    floats: dict[str, np.ndarray] = {}

    def only_consumer(name: str, op: str) -> Any:
        users = consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op:
            raise UserError(f"{source.name}: unexpected graph around {name} (not onnxruntime's dynamic int8)")
        return users[0]

    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:  # int8 weights of a Gather
            zero = inits[node.input[2]] if len(node.input) > 2 else np.zeros((), np.float32)
            floats[node.output[0]] = _dequantized(inits[node.input[0]], inits[node.input[1]], zero)
            dropped.add(id(node))
        elif node.op_type == "DequantizeLinear" and producer.get(node.input[0], node).op_type == "Gather":
            gather = producer[node.input[0]]  # Gather of the int8 table, then DequantizeLinear of the rows
            zero = inits[node.input[2]] if len(node.input) > 2 else np.zeros((), np.float32)
            table = gather.input[0].removesuffix("_quantized")
            floats[table] = _dequantized(inits[gather.input[0]], inits[node.input[1]], zero)
            replaced[id(gather)] = helper.make_node("Gather", [table, *gather.input[1:]], list(node.output),
                                                    name=f"{gather.name}_float")
            replaced[id(gather)].attribute.extend(gather.attribute)
            dropped.add(id(node))
        elif node.op_type == "MatMulInteger":  # DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scales)
            quantize = producer[node.input[0]]
            cast = only_consumer(node.output[0], "Cast")
            mul = only_consumer(cast.output[0], "Mul")
            scales = producer[next(i for i in mul.input if i != cast.output[0])]
            weight_scale = next(inits[i] for i in scales.input if i in inits)
            weight = node.input[1].removesuffix("_quantized")
            floats[weight] = _dequantized(inits[node.input[1]], weight_scale, inits[node.input[3]])
            replaced[id(mul)] = helper.make_node("MatMul", [quantize.input[0], weight], [mul.output[0]],
                                                 name=f"{node.name}_float")
            dropped.update(id(n) for n in (quantize, node, cast, scales))
        elif node.op_type == "DynamicQuantizeLSTM":  # weights stored transposed: (directions, input, 4 * hidden)
            names = list(node.input)
            w_scale, w_zero, r_scale, r_zero = (inits[n] for n in names[LSTM_SCALES])
            w, r = names[1].removesuffix("_quantized"), names[2].removesuffix("_quantized")
            floats[w] = np.transpose(_dequantized(inits[names[1]], w_scale, w_zero, axis0=True), (0, 2, 1))
            floats[r] = np.transpose(_dequantized(inits[names[2]], r_scale, r_zero, axis0=True), (0, 2, 1))
            lstm = helper.make_node("LSTM", [names[0], w, r, *names[3:8]], list(node.output), name=f"{node.name}_float")
            lstm.attribute.extend(node.attribute)
            replaced[id(node)] = lstm
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used and i.name not in floats]
    del graph.initializer[:]
    graph.initializer.extend(kept + [numpy_helper.from_array(a, name) for name, a in floats.items()])
    standard = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(standard)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


def dequantize_version(source: Path, target: Path) -> Path:
    config = read_config(source)
    quantization = config.pop("quantization", None)
    if not quantization or not str(quantization.get("method", "")).startswith("dynamic"):
        raise UserError(f"{source} is not a dynamic int8 version")
    new_version_from(source, target, config)
    for graph in config["graphs"].values():
        dequantize_graph(source / graph, target / graph)
    config.update(name=target.parent.name, version=int(target.name),
                  dequantized_from={"model": config.get("name"), "version": int(source.name),
                                    "method": quantization["method"]})
    write_json(target / "config.json", config)
    return target


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a dynamic int8 version folder")
    parser.add_argument("target", type=Path, help="the float version folder to write (NAME/VERSION)")
    args = parser.parse_args(argv)
    sys.stdout.write(f"{dequantize_version(args.source, args.target)}\n")


if __name__ == "__main__":
    main()
