"""Writes one model version folder: graphs, tokenizer(s), config.json (with provenance), model card."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.errors import UserError
from service.repository import next_version, read_config, valid_name, write_json

LIBRARIES = ("torch", "onnx", "onnxruntime", "tokenizers", "numpy", "sacrebleu", "seqserve")


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_provenance(source: str, settings: Any, n_train: int, n_valid: int, n_test: int) -> dict[str, Any]:
    path = Path(source)
    return {
        "source": source,
        "sha256": file_digest(path) if path.is_file() else None,
        "settings": {k: v for k, v in vars(settings).items() if k != "source"},
        "sizes": {"train": n_train, "valid": n_valid, "test": n_test},
        "command": " ".join(["seqserve", *sys.argv[1:]]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@dataclass
class VersionWriter:
    path: Path

    @classmethod
    def create(cls, model_dir: Path, version: int | None) -> VersionWriter:
        if not valid_name(model_dir.name):
            raise UserError(f"{model_dir}: model names use letters, digits, '_', '-', '.' (at most 64)")
        number = version if version is not None else next_version(model_dir)
        if number < 1:
            raise UserError(f"--version must be at least 1, got {number}")
        path = model_dir / str(number)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return cls(path)

    def copy(self, src: Path, name: str) -> None:
        if src.is_file():
            shutil.copyfile(src, self.path / name)

    def write_config(self, **config: Any) -> None:
        write_json(self.path / "config.json", {
            "name": self.path.parent.name, "version": int(self.path.name), **config,
            "library_versions": library_versions(),
        })

    def write_card(self) -> None:
        """A short README.md model card from config.json and metrics.json."""
        config = read_config(self.path)
        metrics_path = self.path / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        prov = config.get("provenance", {})
        lines = [
            f"# {config['name']} v{config['version']} ({config['kind']})",
            "",
            f"- Data: `{prov.get('source')}`, sizes {prov.get('sizes')}",
            f"- Made by: `{prov.get('command')}` on {prov.get('created')}",
            f"- Architecture: `{json.dumps(config.get('model'))}`",
            f"- Graphs: {', '.join(config['graphs'].values())}; tokenizer(s): "
            f"{', '.join(sorted(set(config['tokenizers'].values())))}; max length {config['max_length']}",
        ]
        if config.get("labels"):
            lines.append(f"- Labels: {', '.join(config['labels'])}")
        lines += ["", "## Evaluation (ONNX model, as served)", ""]
        for split, figures in metrics.items():
            summary = {k: round(v, 4) for k, v in figures.items() if isinstance(v, int | float)}
            lines.append(f"- {split}: {summary}")
        lines += ["", "Figures are on held-out data of the source above; other domains will differ.", ""]
        (self.path / "README.md").write_text("\n".join(lines), encoding="utf-8")


def save_run_spec(work_dir: Path, **spec: Any) -> None:
    """model.json beside the checkpoint: everything needed to rebuild and export the model."""
    write_json(work_dir / "model.json", spec)


def load_run_spec(work_dir: Path) -> dict[str, Any]:
    path = work_dir / "model.json"
    if not path.is_file() or not (work_dir / "best.safetensors").is_file():
        raise UserError(f"{work_dir}: not a training run folder (needs model.json and best.safetensors)")
    spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return spec
