"""Evaluate a model version through its ONNX graph(s), so the figures are what serving gives."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.engine.repository import read_config, resolve_version_dir, write_json
from training.kinds import TOOLS
from training.repo_writer import VersionWriter


def evaluate_version(version_dir: Path, examples: Sequence[Any], split: str, **options: Any) -> dict[str, Any]:
    """Evaluate and merge the figures into metrics.json under `split`."""
    figures = TOOLS[read_config(version_dir)["kind"]].evaluate(version_dir, examples, **options)
    path = version_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics[split] = figures
    write_json(path, metrics)
    return figures


def load_eval_data(config: dict[str, Any], args: Any) -> Sequence[Any]:
    """The examples `seqserve evaluate` scores: the recorded data's split, or the data given."""
    return TOOLS[config["kind"]].eval_data(config, args)


def evaluate_command(args: Any) -> dict[str, Any]:
    """`seqserve evaluate`: the data the model was trained on (its split), or a recipe or file given."""
    version_dir = resolve_version_dir(args.model_dir)
    config = read_config(version_dir)
    examples = load_eval_data(config, args)
    wanted = TOOLS[config["kind"]].eval_options
    options = {k: getattr(args, k) for k in wanted if getattr(args, k, None) is not None}
    figures = evaluate_version(version_dir, examples, split=args.split, **options)
    VersionWriter(version_dir).write_card()
    summary = {k: round(v, 4) for k, v in figures.items() if isinstance(v, int | float)}
    logging.getLogger("seqserve").info("%s %s: %s", version_dir, args.split, json.dumps(summary))
    return figures
