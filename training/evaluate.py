"""Evaluate a model version through its ONNX graph(s), so the figures are what serving gives."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import UserError
from service.repository import read_config, write_json
from service.runtime import ClassifierRuntime
from training.data import Example
from training.metrics import classification_report


def evaluate_classifier(version_dir: Path, examples: Sequence[Example], batch_size: int = 128) -> dict[str, Any]:
    config = read_config(version_dir)
    runtime = ClassifierRuntime(version_dir, config)
    index = {label: i for i, label in enumerate(runtime.labels)}
    unknown = sorted({e.label for e in examples} - set(index))
    if unknown:
        raise UserError(f"labels {unknown} are not among the model's labels {runtime.labels}")
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].text))  # similar lengths per batch
    preds = np.zeros(len(examples), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        preds[rows] = runtime.predict([examples[i].text for i in rows]).argmax(axis=1)
    gold = [index[e.label] for e in examples]
    return classification_report(gold, preds.tolist(), len(runtime.labels), runtime.labels)


def evaluate_version(version_dir: Path, examples: Sequence[Any], split: str, **options: Any) -> dict[str, Any]:
    """Evaluate and merge the figures into metrics.json under `split`."""
    kind = read_config(version_dir)["kind"]
    if kind == "classifier":
        figures = evaluate_classifier(version_dir, examples)
    else:
        from training.translate import evaluate_translator

        figures = evaluate_translator(version_dir, examples, **options)
    path = version_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics[split] = figures
    write_json(path, metrics)
    return figures


def evaluate_command(args: Any) -> dict[str, Any]:
    """`seqserve evaluate`: the data the model was trained on (its split), or a recipe or file given."""
    from service.repository import resolve_version_dir

    version_dir = resolve_version_dir(args.model_dir)
    config = read_config(version_dir)
    examples = load_eval_data(config, args)
    options = {k: getattr(args, k) for k in ("beam_size", "plot_attention") if getattr(args, k, None) is not None}
    figures = evaluate_version(version_dir, examples, split=args.split, **options)
    from training.repo_writer import VersionWriter

    VersionWriter(version_dir).write_card()
    summary = {k: round(v, 4) for k, v in figures.items() if isinstance(v, int | float)}
    logging.getLogger("seqserve").info("%s %s: %s", version_dir, args.split, json.dumps(summary))
    return figures


def load_eval_data(config: dict[str, Any], args: Any) -> Sequence[Any]:
    if config["kind"] != "classifier":
        from training.translate import load_eval_pairs

        return load_eval_pairs(config, args)
    from training.classify import RECIPES, LabelledData

    settings = dict(config.get("provenance", {}).get("settings", {}))
    source = args.data or config.get("provenance", {}).get("source")
    if not source:
        raise UserError("the model records no training data; pass --data")
    if args.data is not None and args.data not in RECIPES:
        from training.data import read_labelled

        return read_labelled(args.data, args.text_field, args.label_field)  # a file: all of it
    data = LabelledData(source, **{k: v for k, v in settings.items() if k in LabelledData.__dataclass_fields__})
    train, valid, test = data.load()
    splits = {"train": train, "valid": valid, "test": test}
    if args.split not in splits:
        raise UserError(f"--split must be one of {', '.join(splits)}, got {args.split!r}")
    return splits[args.split]
