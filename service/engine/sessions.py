"""onnxruntime sessions and execution providers (shared by every kind's runtime, in evaluation and in the service)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger("seqserve.engine")

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class SessionOptions:
    device: str = "auto"  # auto: CUDA when onnxruntime has it, else CPU
    intra_op_threads: int = 0  # 0 lets onnxruntime choose
    graph_optimization: str = "all"
    # onnxruntime's pool threads spin-wait between runs by default. Offline that saves a wake-up per call;
    # in the service the spinning steals the cores the event loop needs, so the service turns it off.
    spinning: bool = True


def providers_for(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise ValueError("device 'cuda' asked for, but this onnxruntime has no CUDAExecutionProvider "
                         "(install onnxruntime-gpu)")
    return ["CPUExecutionProvider"]


def make_session(path: Path, opts: SessionOptions) -> ort.InferenceSession:
    """A session on the device asked for. `cuda` must get the CUDA provider (or the model fails to load, with the
    reason); `auto` takes it when it starts, and otherwise runs on the CPU with an error in the log."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.intra_op_threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = OPT_LEVELS[opts.graph_optimization]
    so.log_severity_level = 3
    if not opts.spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = providers_for(opts.device)
    session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    if providers[0] == "CUDAExecutionProvider" and session.get_providers()[0] != "CUDAExecutionProvider":
        if opts.device == "cuda":
            raise RuntimeError("device 'cuda' asked for, but onnxruntime fell back to the CPU (check the GPU, the "
                               "driver and the CUDA and cuDNN libraries onnxruntime-gpu needs)")
        log.error("%s: the CUDA execution provider did not start; running on the CPU (device 'auto')", path.name)
    return session


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))
