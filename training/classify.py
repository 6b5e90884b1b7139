"""Classifier training: data -> tokenizer -> RNNClassifier -> fit -> ONNX model version."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.classifier import ClassifierConfig, RNNClassifier
from service.text import TextEncoder
from training.batching import bucket_batches, to_tensors
from training.data import DataError, Example, read_labelled, stratified_split
from training.embeddings import pretrained_embeddings
from training.evaluate import evaluate_version
from training.export import export_run
from training.loop import (
    MIN_VOCAB_SIZE,
    Batch,
    TrainConfig,
    check_at_least,
    check_fraction,
    check_same_model,
    check_split,
    fit,
    init_distributed,
    prepare_work_dir,
    seed_everything,
)
from training.metrics import classification_report
from training.recipes import rotten_tomatoes
from training.repo_writer import VersionWriter, data_provenance, save_run_spec
from training.tokenizer import train_tokenizer

log = logging.getLogger("seqserve.train")

RECIPES = {"rotten_tomatoes": rotten_tomatoes}


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
    data: LabelledData
    out: Path
    model: dict[str, object] = field(default_factory=dict)  # ClassifierConfig fields other than sizes
    train: TrainConfig = field(default_factory=TrainConfig)
    vocab_size: int = 8000
    max_length: int = 256
    lowercase: bool = True
    version: int | None = None
    work_dir: Path | None = None
    resume: bool = False
    embeddings: str | None = None  # pretrained word vectors for the embedding layer (see training/embeddings.py)
    adversarial: float = 0.0  # norm of the adversarial embedding perturbation; 0 turns it off

    def __post_init__(self) -> None:
        check_at_least(MIN_VOCAB_SIZE, vocab_size=self.vocab_size)
        check_at_least(1, max_length=self.max_length,
                       **{k: v for k, v in self.model.items() if k in ("emb_dim", "hidden", "layers")})
        check_fraction(**{k: v for k, v in self.model.items() if k == "dropout"})
        check_at_least(0, adversarial=self.adversarial)


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


def train_classifier(job: ClassifierJob) -> Path | None:
    """Train, export, evaluate; returns the new version folder (on the main process)."""
    env = init_distributed(job.train.device)
    work_dir = job.work_dir or Path("runs") / job.out.name
    prepare_work_dir(work_dir, job.resume)
    train, valid, test = job.data.load()
    labels = sorted({e.label for e in train})
    unseen = sorted({e.label for e in valid + test} - set(labels))
    if unseen:
        raise DataError(f"labels {unseen} appear in validation/test data but not in training data")
    tok_path = work_dir / "tokenizer.json"
    if env.main and not (job.resume and tok_path.is_file()):
        train_tokenizer((e.text for e in train), job.vocab_size, job.lowercase).save(str(tok_path))
    env.barrier()
    encoder = TextEncoder.load(tok_path, job.max_length)
    index = {label: i for i, label in enumerate(labels)}

    def encode(examples: list[Example]) -> list[tuple[list[int], int]]:
        return list(zip(encoder.ids([e.text for e in examples]), [index[e.label] for e in examples], strict=True))

    seed_everything(job.train.seed)
    vectors = None
    if job.embeddings:
        vectors = pretrained_embeddings(job.embeddings, encoder.tokenizer, job.train.seed)
        job.model["emb_dim"] = vectors.matrix.shape[1]
    cfg = ClassifierConfig(vocab_size=encoder.vocab_size, num_classes=len(labels), **job.model)  # type: ignore[arg-type]
    model = RNNClassifier(cfg)
    if vectors is not None:
        with torch.no_grad():
            model.embedding.weight.copy_(torch.from_numpy(vectors.matrix))
        if env.main:
            log.info("embeddings from %s: %.1f%% of the vocabulary found", job.embeddings,
                     100 * vectors.coverage)
    device = torch.device("cuda" if job.train.device.startswith("cuda") else "cpu")
    task = ClassifierTask(encode(train), encode(valid), job.train.seed, device, job.adversarial)
    if job.resume:
        check_same_model(work_dir, cfg.to_dict())
        env.barrier()  # every process has read model.json before the main one rewrites it
    if env.main:
        log.info("training %s classifier on %d examples (%d valid, %d test), %d labels, vocab %d",
                 cfg.cell, len(train), len(valid), len(test), len(labels), encoder.vocab_size)
        save_run_spec(work_dir, kind="classifier", model=cfg.to_dict(), labels=labels, max_length=job.max_length,
                      provenance=data_provenance(job.data.source, job.data, len(train), len(valid), len(test)))
    history = fit(model, task, job.train, work_dir, env, resume=job.resume)
    if not env.main:
        return None
    version_dir = export_run(work_dir, job.out, job.version, [e.text for e in test],
                             training={**vars(job.train), "embeddings": job.embeddings,
                                       "adversarial": job.adversarial, "best_epoch": history.best_epoch + 1,
                                       "history": history.epochs})
    evaluate_version(version_dir, test, split="test")
    VersionWriter(version_dir).write_card()
    return version_dir
