"""Classifier training: data -> tokenizer -> RNNClassifier -> fit (the shared job) -> ONNX -> accuracy."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model
from torch import Tensor, nn

from models.classifier import ClassifierConfig, RNNClassifier
from service.engine.classifier import ClassifierRuntime
from service.engine.repository import read_config
from service.engine.text import TextEncoder
from service.errors import UserError
from training.batching import bucket_batches, to_tensors
from training.calibration import Feeds, one_graph_feeds
from training.classifier_export import export_classifier, sample_ids
from training.data import DataError, Example, read_labelled, stratified_split
from training.embeddings import pretrained_embeddings
from training.kind import Built, KindTools, Splits, choose_split, recorded_data
from training.loop import MIN_VOCAB_SIZE, Batch, TrainConfig, check_at_least, check_fraction, check_split
from training.metrics import classification_report
from training.recipes import rotten_tomatoes
from training.repo_writer import VersionWriter
from training.tokenizer import train_tokenizer

log = logging.getLogger("seqserve.train")

RECIPES = {"rotten_tomatoes": rotten_tomatoes}
TOKENIZER = "tokenizer.json"


@dataclass
class LabelledData:
    source: str
    text_field: str = "text"
    label_field: str = "label"
    valid_path: str | None = None
    test_path: str | None = None
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        check_split(self.valid_fraction, self.test_fraction)

    def load(self) -> tuple[list[Example], list[Example], list[Example]]:
        """Train, valid and test examples: the user's split files, or a stratified split by seed."""
        full = self._read(self.source)
        if self.valid_path and self.test_path:
            return full, self._read(self.valid_path), self._read(self.test_path)
        if self.valid_path or self.test_path:
            raise DataError("give both --valid-data and --test-data, or neither to split --data by --seed")
        train, valid, test = stratified_split(full, self.valid_fraction, self.test_fraction, self.seed)
        if not valid or not test:
            raise DataError(f"{self.source}: too few examples ({len(full)}) to split off validation and test "
                            f"(--valid-fraction {self.valid_fraction:g}, --test-fraction {self.test_fraction:g})")
        return train, valid, test

    def _read(self, spec: str) -> list[Example]:
        if spec in RECIPES:
            return RECIPES[spec]()
        if not Path(spec).exists() and "/" not in spec and "." not in spec:
            raise DataError(f"unknown recipe {spec!r}; recipes are {', '.join(RECIPES)}, or give a file path")
        return read_labelled(spec, self.text_field, self.label_field)


@dataclass
class ClassifierJob:
    """A classifier's training job. `model` is built once from the options; the data decides its vocabulary
    size (the tokenizer's, at most `model.vocab_size`), its classes and, with `embeddings`, its emb_dim."""

    data: LabelledData
    out: Path
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    max_length: int = 256
    lowercase: bool = True
    version: int | None = None
    work_dir: Path | None = None
    resume: bool = False
    embeddings: str | None = None  # pretrained word vectors for the embedding layer (see training/embeddings.py)
    adversarial: float = 0.0  # norm of the adversarial embedding perturbation; 0 turns it off
    kind = "classifier"

    def __post_init__(self) -> None:
        m = self.model
        check_at_least(MIN_VOCAB_SIZE, vocab_size=m.vocab_size)
        check_at_least(1, max_length=self.max_length, emb_dim=m.emb_dim, hidden=m.hidden, layers=m.layers)
        check_fraction(dropout=m.dropout)
        check_at_least(0, adversarial=self.adversarial)

    def load(self) -> Splits:
        train, valid, test = self.data.load()
        unseen = sorted({e.label for e in valid + test} - {e.label for e in train})
        if unseen:
            raise DataError(f"labels {unseen} appear in validation/test data but not in training data")
        return Splits(train, valid, test)

    def tokenizers_ready(self, work_dir: Path) -> bool:
        return (work_dir / TOKENIZER).is_file()

    def train_tokenizers(self, train: list[Example], work_dir: Path) -> None:
        train_tokenizer((e.text for e in train), self.model.vocab_size, self.lowercase).save(str(work_dir / TOKENIZER))

    def build(self, splits: Splits, work_dir: Path, device: str, main: bool) -> Built:
        encoder = TextEncoder.load(work_dir / TOKENIZER, self.max_length)
        labels = sorted({e.label for e in splits.train})
        index = {label: i for i, label in enumerate(labels)}

        def encode(examples: list[Example]) -> list[tuple[list[int], int]]:
            return list(zip(encoder.ids([e.text for e in examples]), [index[e.label] for e in examples],
                            strict=True))

        vectors = pretrained_embeddings(self.embeddings, encoder.tokenizer, self.train.seed) if self.embeddings \
            else None
        cfg = replace(self.model, vocab_size=encoder.vocab_size, num_classes=len(labels),
                      emb_dim=self.model.emb_dim if vectors is None else vectors.matrix.shape[1])
        model = RNNClassifier(cfg)
        if vectors is not None:
            with torch.no_grad():
                model.embedding.weight.copy_(torch.from_numpy(vectors.matrix))
            if main:
                log.info("embeddings from %s: %.1f%% of the vocabulary found", self.embeddings,
                         100 * vectors.coverage)
        task = ClassifierTask(encode(splits.train), encode(splits.valid), self.train.seed, torch.device(device),
                              self.adversarial)
        summary = (f"training {cfg.cell} classifier on {len(splits.train)} examples ({len(splits.valid)} valid, "
                   f"{len(splits.test)} test), {len(labels)} labels, vocab {encoder.vocab_size}")
        return Built(model, cfg.to_dict(), task, summary, spec={"labels": labels, "max_length": self.max_length},
                     record={"embeddings": self.embeddings, "adversarial": self.adversarial},
                     export_texts=[e.text for e in splits.test])


class ClassifierTask:
    """Cross-entropy on labels; validation accuracy is the early-stopping score."""

    unit = "examples"

    def __init__(self, train: list[tuple[list[int], int]], valid: list[tuple[list[int], int]], seed: int,
                 device: torch.device, adversarial: float = 0.0) -> None:
        self.train, self.valid, self.seed, self.device = train, valid, seed, device
        self.adversarial = adversarial

    def train_batches(self, epoch: int, batch_size: int) -> Sequence[Batch]:
        groups = bucket_batches(self.train, batch_size, lambda e: len(e[0]), self.seed + epoch)
        return [self._batch(g) for g in groups]

    def _batch(self, group: Sequence[tuple[list[int], int]]) -> Batch:
        ids, lengths = to_tensors([g[0] for g in group])
        return {"ids": ids, "lengths": lengths, "labels": torch.tensor([g[1] for g in group])}

    def step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        ids, lengths, labels = (batch[k].to(self.device) for k in ("ids", "lengths", "labels"))
        loss = F.cross_entropy(model(ids, lengths), labels)
        if self.adversarial > 0:  # Miyato et al. 2017: also fit the worst small shift of the embeddings
            embedded = getattr(model, "module", model).embedded
            (grad,) = torch.autograd.grad(loss, embedded, retain_graph=True)
            r_adv = self.adversarial * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
            loss = loss + F.cross_entropy(model(ids, lengths, perturb=r_adv.detach()), labels)
        return loss, len(labels)

    def validate(self, model: nn.Module) -> dict[str, float]:
        preds, gold, loss = [], [], 0.0
        for group in bucket_batches(self.valid, 256, lambda e: len(e[0]), 0, shuffle=False):
            batch = self._batch(group)
            logits = model(batch["ids"].to(self.device), batch["lengths"].to(self.device))
            loss += float(F.cross_entropy(logits, batch["labels"].to(self.device), reduction="sum"))
            preds.extend(logits.argmax(-1).tolist())
            gold.extend(batch["labels"].tolist())
        report = classification_report(gold, preds, num_classes=int(max(gold + preds)) + 1)
        return {"score": report["accuracy"], "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                "loss": loss / len(gold)}


def export_run_files(spec: dict[str, Any], work_dir: Path, writer: VersionWriter,
                     sample_texts: Sequence[str]) -> dict[str, Any]:
    """The classifier graph (checked against PyTorch) and its tokenizer, for config.json."""
    model = RNNClassifier(ClassifierConfig.from_dict(spec["model"]))
    load_model(model, str(work_dir / "best.safetensors"))
    writer.copy(work_dir / "tokenizer.json", "tokenizer.json")
    encoder = TextEncoder.load(work_dir / "tokenizer.json", int(spec["max_length"]))
    interface = export_classifier(model.eval(), writer.path / "model.onnx", sample_ids(encoder, sample_texts))
    return {"graphs": {"model": "model.onnx"}, "tokenizers": {"source": "tokenizer.json"}, **interface}


def evaluate_classifier(version_dir: Path, examples: Sequence[Example], batch_size: int = 128) -> dict[str, Any]:
    runtime = ClassifierRuntime(version_dir, read_config(version_dir))
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


def load_eval_data(config: dict[str, Any], args: Any) -> Sequence[Example]:
    """`seqserve evaluate` data for a classifier: the recorded source and its split, or all of --data."""
    source, settings = recorded_data(config, args)
    if args.data is not None and args.data not in RECIPES:
        return read_labelled(args.data, args.text_field, args.label_field)  # a file: all of it
    data = LabelledData(source, **{k: v for k, v in settings.items() if k in LabelledData.__dataclass_fields__})
    train, valid, test = data.load()
    return choose_split({"train": train, "valid": valid, "test": test}, args.split)


def calibration_feeds(version_dir: Path, config: dict[str, Any], texts: Sequence[str]) -> dict[str, list[Feeds]]:
    """The classifier graph's feeds for the texts, in batches of like lengths as the service makes them."""
    runtime = ClassifierRuntime(version_dir, config)
    return one_graph_feeds(runtime, runtime.predict, texts)


TOOLS = KindTools(export=export_run_files, evaluate=evaluate_classifier, eval_data=load_eval_data,
                  input_text=lambda example: example.text, calibration_feeds=calibration_feeds,
                  evaluate_after_quantize=True)
