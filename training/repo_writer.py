"""Writes one model version folder: graphs, tokenizer(s), config.json (with provenance), model card."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.engine.repository import next_version, read_config, valid_name, write_json
from service.errors import UserError
from training.recipes import RECIPE_PACKAGES, recipe_files

LIBRARIES = ("torch", "onnx", "onnxruntime", "tokenizers", "numpy", "sacrebleu", "seqserve")


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions of the named distributions; ones not installed are left out."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def library_versions() -> dict[str, str]:
    return {"python": platform.python_version(), **package_versions(LIBRARIES)}


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def new_version_from(source: Path, target: Path, config: dict[str, Any]) -> None:
    """An empty `target` version folder (replacing any) with the tokenizers and other files (`files`: a CRF's
    scores, say) of `source`, for a variant of it."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in {*config["tokenizers"].values(), *(config.get("files") or {}).values()}:
        shutil.copyfile(source / name, target / name)


def invocation() -> str:
    """The seqserve command line being run, for provenance."""
    return " ".join(["seqserve", *sys.argv[1:]])


def data_provenance(source: str, settings: Any, n_train: int, n_valid: int, n_test: int) -> dict[str, Any]:
    """Where the data came from, with the sha256 of every file read (a recipe's files too)."""
    options = {k: v for k, v in vars(settings).items() if k != "source"}
    files = {name: file_digest(path) if path.is_file() else None
             for name, path in data_files(source, options).items()}
    return {
        "source": source,
        # the --data file's, or the one file a recipe reads (a recipe reading several has them in "files" only)
        "sha256": files.get(source, next(iter(files.values())) if len(files) == 1 else None),
        "files": files,
        "packages": package_versions(RECIPE_PACKAGES.get(source, ())),
        "settings": options,
        "sizes": {"train": n_train, "valid": n_valid, "test": n_test},
        "command": invocation(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def data_files(source: str, settings: dict[str, Any]) -> dict[str, Path]:
    """The files a data source reads, by the name provenance records: a recipe's by file name, the user's as given."""
    recipe = recipe_files(source, settings)
    if recipe is not None:
        return {path.name: path for path in recipe}
    given = [source, *(v for k, v in settings.items() if k.endswith("_path") and isinstance(v, str))]
    files: dict[str, Path] = {}
    for name in given:
        path = Path(name)
        if path.is_dir():  # a folder of splits (a tagger's ATIS/SNIPS format): every file in it
            files.update({str(p): p for p in sorted(path.rglob("*")) if p.is_file()})
        else:
            files[name] = path
    return files


def stale_data(provenance: dict[str, Any]) -> str | None:
    """Why the recorded training data cannot be loaded again as it was, or None when it can."""
    source = provenance.get("source")
    if not source:
        return "the source version records no training data"
    settings = provenance.get("settings") or {}
    try:
        current = data_files(source, settings)
    except UserError as exc:
        return str(exc)
    recorded = provenance.get("files")
    if recorded is None:  # written before every file was hashed: a recipe's name is all there is to go on
        if recipe_files(source, settings) is not None:
            return None
        recorded = {name: provenance.get("sha256") if name == source else None for name in current}
    for name, digest in recorded.items():
        path = current.get(name)
        if path is None or not path.is_file():
            return f"training data {name} is missing"
        if digest is None:
            return f"training data {name} was not pinned by a sha256"
        if file_digest(path) != digest:
            return f"training data {path} has changed since (sha256 differs)"
    return None


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
        quantized = config.get("quantization")
        lines = [
            f"# {config['name']} v{config['version']} ({config['kind']}{', int8' if quantized else ''})",
            "",
            *([_quantization_line(quantized)] if quantized else []),
            *([_dequantized_line(config["dequantized_from"])] if config.get("dequantized_from") else []),
            f"- Data: `{prov.get('source')}`, sizes {prov.get('sizes')}",
            f"- Made by: `{prov.get('command')}` on {prov.get('created')}",
            f"- Architecture: `{json.dumps(config.get('model'))}`",
            f"- Graphs: {', '.join(config['graphs'].values())}; tokenizer(s): "
            f"{', '.join(sorted(set(config['tokenizers'].values())))}; max length {config['max_length']}",
        ]
        if config.get("labels"):
            lines.append(f"- Labels: {', '.join(config['labels'])}")
        shortlist = config.get("shortlist")
        if isinstance(shortlist, dict):
            lines.append(f"- Lexical shortlist: {shortlist.get('file')} and {shortlist.get('graph')} "
                         f"({shortlist.get('method')}: {shortlist.get('per_source')} targets per source token, the "
                         f"{shortlist.get('frequent')} most frequent; validation {shortlist.get('valid', {})}), used "
                         "in decoding unless a request or the service turns it off")
        lines += ["", "## Evaluation (ONNX model, as served)", ""]
        for split, figures in metrics.items():
            summary = {k: round(v, 4) for k, v in figures.items() if isinstance(v, int | float)}
            summary.update({f"{k}.{inner}": round(v, 4) for k, nested in figures.items() if isinstance(nested, dict)
                            for inner, v in nested.items() if isinstance(v, int | float)})  # e.g. a reference's
            lines.append(f"- {split}: {summary}")
        if not metrics:
            lines.append(f"Not evaluated yet: run `seqserve evaluate {self.path}`.")
        lines += ["", "Figures are on held-out data of the source above; other domains will differ.", ""]
        (self.path / "README.md").write_text("\n".join(lines), encoding="utf-8")


def _quantization_line(quantization: dict[str, Any]) -> str:
    """The card's line saying which fp32 version an int8 variant was made from, and how."""
    source = f"`{quantization['from_model']}` " if quantization.get("from_model") else ""
    if quantization.get("method", "").startswith("static"):
        calibration = quantization.get("calibration", {})
        how = (f"static quantization with onnxruntime: int8 weights, activation scales calibrated on "
               f"{calibration.get('texts')} texts of {calibration.get('source')}, so answers do not depend on the "
               "batch; recurrent layers in float")
    else:  # versions made before static quantization: scales computed over each batch
        how = "dynamic quantization with onnxruntime: int8 weights, activations quantized per batch at run time"
    line = f"- Quantized: int8 variant ({how}) made from {source}version {quantization.get('from_version')}"
    if quantization.get("ops"):
        line += f"; ops quantized: {', '.join(quantization['ops'])}"
    if quantization.get("command"):
        line += f"; by `{quantization['command']}` on {quantization.get('created')}"
    return line + ". Data, training and architecture below are those of the source version."


def _dequantized_line(source: dict[str, Any]) -> str:
    return (f"- Weights: those of `{source.get('model')}` v{source.get('version')} ({source.get('method')}), "
            "turned back into floats by `python -m training.dequantize` (that version's float run was not kept)")


def save_run_spec(work_dir: Path, **spec: Any) -> None:
    """model.json beside the checkpoint: everything needed to rebuild and export the model."""
    write_json(work_dir / "model.json", spec)


def load_run_spec(work_dir: Path) -> dict[str, Any]:
    path = work_dir / "model.json"
    if not path.is_file() or not (work_dir / "best.safetensors").is_file():
        raise UserError(f"{work_dir}: not a training run folder (needs model.json and best.safetensors)")
    spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return spec
