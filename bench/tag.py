"""Tagging: texts/s and latency of the service per concurrency, beside the bare engine per batch size, for the
fp32 version and its int8 variant (when the repository has one, or one can be quantized). The machinery is
`bench.onetext`'s, shared with `bench classify`."""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.core import Call, read_texts
from bench.onetext import Workload, find_variants
from bench.onetext import run as run_workload
from service.engine.repository import read_config
from service.engine.tagger import TaggerRuntime
from service.errors import UserError


def load_texts(a: argparse.Namespace, model_dir: Path | None) -> tuple[list[str], str]:
    """The lines of --texts-file; else a fixed sample of the test split the model records (its training data, read
    as `seqserve evaluate` reads it); else, with --url alone, of the ATIS recipe's test split."""
    if a.texts_file is not None:
        return read_texts(a.texts_file), str(a.texts_file)
    try:
        from training.tag import TOOLS, TaggedData, load_eval_data
    except ImportError as exc:  # the serve-only install: no torch for the training package
        raise UserError(f"bench tag: cannot read the model's data ({exc}); pass --texts-file") from None

    if model_dir is not None:
        version_dir = find_variants(model_dir)[0].version_dir
        config = read_config(version_dir)
        sentences = load_eval_data(config, SimpleNamespace(data=None, split="test"))
        where = f"the test split of {config.get('provenance', {}).get('source')}, the data {version_dir} records"
    else:
        sentences = TaggedData("atis").load()[2]
        where = "the ATIS test split"
    texts = [t for t in (TOOLS.input_text(s) for s in sentences) if t.strip()]
    sample = random.Random(a.seed).sample(texts, min(a.texts, len(texts)))
    return sample, f"{len(sample)} utterances (seed {a.seed}) from {where}"


def check_answer(call: Call, body: Any) -> str | None:
    """One result per text sent, and every token and entity is the slice of its text at its offsets."""
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or len(results) != call.texts:
        return f"expected {call.texts} result(s), got {str(body)[:200]}"
    texts = json.loads(call.body)["texts"]
    for text, result in zip(texts, results, strict=True):
        try:
            spans = [("token", t) for t in result["tokens"]] + [("entity", e) for e in result["entities"]]
            wrong = next((f"{what} {span}" for what, span in spans
                          if text[span["start"]:span["end"]] != span["text"]), None)
        except (KeyError, TypeError) as exc:
            return f"a malformed tagging result ({type(exc).__name__}: {exc}): {str(result)[:200]}"
        if wrong is not None:
            return f"{wrong[:200]} is not the slice of {text!r} at its offsets"
    return None


def _engine(version_dir: Path, config: dict[str, Any]) -> Callable[[list[str]], object]:
    return TaggerRuntime(version_dir, config).tag_texts


TAG = Workload(
    name="tag", path="/v1/tag", title="Tagging benchmark", noun="tagging",
    bare="`TaggerRuntime.tag_texts` (split words, tokenize, pad, onnxruntime, tags by Viterbi and marginals "
    "with a CRF or else softmax, entities, intent)", check=check_answer, engine=_engine, texts=load_texts)


def run(a: argparse.Namespace) -> None:
    run_workload(TAG, a)
