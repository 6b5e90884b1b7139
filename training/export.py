"""A training run folder (model.json, best.safetensors, tokenizers) into a model version, by the kind's exporter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.kinds import TOOLS
from training.repo_writer import VersionWriter, load_run_spec


def export_run(work_dir: Path, out: Path, version: int | None, sample_texts: Sequence[str] = (),
               training: dict[str, Any] | None = None) -> Path:
    """Turn a training run folder (model.json, best.safetensors, tokenizer) into a model version."""
    spec = load_run_spec(work_dir)
    writer = VersionWriter.create(out, version)
    writer.copy(work_dir / "curves.png", "curves.png")
    files = TOOLS[spec["kind"]].export(spec, work_dir, writer, sample_texts)
    prior = spec.get("training")
    writer.write_config(**{k: v for k, v in spec.items() if k != "training"}, **files,
                        training=training if training is not None else prior)
    return writer.path
