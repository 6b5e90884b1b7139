"""What each model kind gives the shared training pipeline: a job (`Job`: data, tokenizers, model, task) and
its version tools (`KindTools`: export, evaluation and its data). The registry is `training/kinds.py`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from service.errors import UserError
from training.loop import Task, TrainConfig
from training.repo_writer import VersionWriter


@dataclass
class Splits:
    train: list[Any]
    valid: list[Any]
    test: list[Any]


@dataclass
class Built:
    """A job's model, made from its config once the tokenizers exist, and what the run records about it."""

    model: nn.Module
    config: dict[str, Any]  # the model config as saved in model.json (the dataclass's to_dict())
    task: Task
    summary: str  # one log line: what is trained on what
    spec: dict[str, Any] = field(default_factory=dict)  # more model.json fields (labels, max_length, ...)
    record: dict[str, Any] = field(default_factory=dict)  # more of config.json's `training` record
    export_texts: Sequence[str] = ()  # sample texts for the export's parity checks


class Job(Protocol):
    """One kind's training job, as the CLI builds it; `training.job.run_job` runs every kind's the same way."""

    kind: str
    data: Any  # has `source` and the settings that data_provenance records
    out: Path
    train: TrainConfig
    version: int | None
    work_dir: Path | None
    resume: bool

    def load(self) -> Splits: ...

    def tokenizers_ready(self, work_dir: Path) -> bool: ...

    def train_tokenizers(self, train: list[Any], work_dir: Path) -> None: ...

    def build(self, splits: Splits, work_dir: Path, device: str, main: bool) -> Built: ...


@dataclass(frozen=True)
class KindTools:
    """A kind's steps on a model version: export a run, evaluate through ONNX, find its evaluation data, and record
    the feeds its graphs get (for int8 calibration)."""

    export: Callable[[dict[str, Any], Path, VersionWriter, Sequence[str]], dict[str, Any]]
    evaluate: Callable[..., dict[str, Any]]  # (version_dir, examples, **options) -> figures
    eval_data: Callable[[dict[str, Any], Any], Sequence[Any]]  # (config, evaluate's options) -> examples
    input_text: Callable[[Any], str]  # an example of eval_data -> the text a request would send
    # (version_dir, config, texts) -> for each key of config["graphs"], the feeds its session ran while the
    # float model served the texts as the service would
    calibration_feeds: Callable[[Path, dict[str, Any], Sequence[str]], dict[str, list[dict[str, Any]]]]
    # quantize re-evaluates the int8 version on the recorded splits (cheap for a classifier; a beam-search
    # test run of a translator is left to `seqserve evaluate`)
    evaluate_after_quantize: bool = False
    eval_options: tuple[str, ...] = ()  # the options of `seqserve evaluate` that `evaluate` takes
    evaluate_splits: tuple[str, ...] = ("test",)  # what training evaluates the exported version on


def recorded_data(config: dict[str, Any], args: Any) -> tuple[str, dict[str, Any]]:
    """What `seqserve evaluate` reads: --data, or else the source the model records; and the recorded settings."""
    provenance = config.get("provenance", {})
    source = args.data or provenance.get("source")
    if not source:
        raise UserError("the model records no training data; pass --data")
    return source, dict(provenance.get("settings", {}))


def choose_split(splits: dict[str, Sequence[Any]], name: str) -> Sequence[Any]:
    if name not in splits:
        raise UserError(f"--split must be one of {', '.join(splits)}, got {name!r}")
    return splits[name]
