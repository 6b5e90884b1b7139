"""Static int8 activations: calibration feeds recorded from the float model, activation ranges measured on them, and
onnxruntime's dynamic-quantized graph rewritten so that every activation scale is a constant.

Why: `DynamicQuantizeLinear` computes one scale over the whole input tensor, that is over every row of the batch, so
a text's answer would change with its neighbours. With the scales fixed from calibration, quantization is the same
for a row alone or in any batch; integer products are exact, so the int8 graph is batch-invariant wherever the float
graph is. Recurrent ops stay in float: onnxruntime's DynamicQuantizeLSTM quantizes its inputs over the batch too.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from service.errors import UserError

Feeds = dict[str, np.ndarray]
# Ops whose activation quantization onnxruntime computes per batch inside the op; none may remain.
BATCH_DEPENDENT_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul"})
UINT8_LEVELS = 255.0
CALIBRATION_BATCH = 32


class Recorder:
    """An onnxruntime session that keeps every feed it runs (for calibration); anything else goes to the session."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.feeds: list[Feeds] = []

    def run(self, output_names: Any, feeds: Mapping[str, np.ndarray], *args: Any) -> Any:
        self.feeds.append({k: np.array(v) for k, v in feeds.items()})
        return self.session.run(output_names, feeds, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def sample_texts(texts: Sequence[str], size: int, seed: int = 0) -> list[str]:
    """Up to `size` distinct non-empty texts, drawn at random with a fixed seed, shortest first (batches of like
    lengths)."""
    pool = sorted({t for t in texts if t.strip()})
    if not pool:
        raise UserError("no calibration texts: every text is empty")
    chosen = random.Random(seed).sample(pool, min(size, len(pool)))
    return sorted(chosen, key=len)


def one_graph_feeds(runtime: Any, run: Callable[[list[str]], object], texts: Sequence[str]) -> dict[str, list[Feeds]]:
    """The feeds of a runtime's one session (`runtime.session`, config key "model") while `run` serves the texts in
    batches as the service makes them."""
    runtime.session = recorder = Recorder(runtime.session)
    for batch in in_batches(texts, CALIBRATION_BATCH):
        run(batch)
    return {"model": recorder.feeds}


def in_batches(texts: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(texts), size):
        yield list(texts[start:start + size])


def activation_ranges(graph: Path, names: Sequence[str], feeds: Sequence[Feeds]) -> dict[str, tuple[float, float]]:
    """The min and max of each named float tensor of the float graph over the calibration feeds."""
    model = onnx.load(str(graph))
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names
                              if n not in outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    low = dict.fromkeys(names, np.inf)
    high = dict.fromkeys(names, -np.inf)
    for feed in feeds:
        for name, value in zip(names, session.run(list(names), {k: v for k, v in feed.items() if k in inputs}),
                               strict=True):
            if value.size:
                low[name] = min(low[name], float(value.min()))
                high[name] = max(high[name], float(value.max()))
    missing = [n for n in names if not np.isfinite(low[n])]
    if missing:
        raise ValueError(f"{graph.name}: the calibration feeds never produced {missing}")
    return {n: (low[n], high[n]) for n in names}


def uint8_params(low: float, high: float) -> tuple[np.float32, np.uint8]:
    """Scale and zero point as DynamicQuantizeLinear would compute them for a tensor spanning [low, high]."""
    low, high = min(0.0, low), max(0.0, high)
    scale = np.float32((high - low) / UINT8_LEVELS) if high > low else np.float32(1.0)
    zero_point = np.uint8(np.clip(round(-low / float(scale)), 0, 255))
    return scale, zero_point


def op_types(graph: onnx.GraphProto) -> set[str]:
    """Every op type in the graph, those of its subgraphs (a Loop's or an If's body) included."""
    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                ops |= op_types(sub)
    return ops


def fix_activation_scales(dynamic_graph: Path, float_graph: Path, feeds: Sequence[Feeds]) -> dict[str, list[float]]:
    """Rewrite, in place, each DynamicQuantizeLinear of `dynamic_graph` as a QuantizeLinear with the scale and zero
    point of its input's range over `feeds` (measured on `float_graph`). Returns the ranges used."""
    model = onnx.load(str(dynamic_graph))
    dynamic = [n for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"]
    ranges = activation_ranges(float_graph, sorted({n.input[0] for n in dynamic}), feeds) if dynamic else {}
    nodes = []
    for node in model.graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        quantized, scale_name, zero_name = node.output
        scale, zero_point = uint8_params(*ranges[node.input[0]])
        model.graph.initializer.extend([numpy_helper.from_array(np.array(scale), scale_name),
                                        numpy_helper.from_array(np.array(zero_point), zero_name)])
        nodes.append(helper.make_node("QuantizeLinear", [node.input[0], scale_name, zero_name], [quantized],
                                      name=f"{node.name or quantized}_static"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    left = sorted(op_types(model.graph) & BATCH_DEPENDENT_OPS)
    if left:
        raise ValueError(f"{dynamic_graph.name}: ops that quantize over the batch remain: {left}")
    onnx.checker.check_model(model)
    onnx.save(model, str(dynamic_graph))
    return {name: [round(low, 6), round(high, 6)] for name, (low, high) in ranges.items()}

