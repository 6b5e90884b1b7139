"""Language-model training and evaluation: texts -> byte-level BPE -> RNNLanguageModel -> fit (the shared job) ->
ONNX (prompt and step graphs) -> perplexity per token and per word, beside a Kneser-Ney n-gram model on the same
tokens."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_model
from torch import Tensor, nn

from models.lm import LMConfig, RNNLanguageModel
from service.engine.lm import LMRuntime, SampleOptions
from service.engine.repository import read_config
from service.engine.text import BOS_ID, EOS_ID, PAD_ID, TextEncoder
from service.errors import UserError
from training.batching import bucket_batches, to_tensors
from training.calibration import CALIBRATION_BATCH, Feeds, Recorder, in_batches
from training.data import DataError, random_split, read_records, read_text
from training.kind import Built, KindTools, Splits, choose_split, recorded_data
from training.lm_export import WEIGHTS_DTYPES, export_lm
from training.loop import MIN_VOCAB_SIZE, Batch, TrainConfig, check_at_least, check_fraction, check_split
from training.recipes import MULTI30K_LANGS, multi30k_side
from training.repo_writer import VersionWriter
from training.tokenizer import train_tokenizer

log = logging.getLogger("seqserve.train")
RECIPES = ("multi30k",)
TOKENIZER = "tokenizer.json"
REFERENCE_ORDERS = (2, 3, 4)


@dataclass
class TextData:
    source: str  # the multi30k recipe, a text file (one text a line, .gz too) or a .jsonl/.csv/.tsv file
    lang: str = "en"  # multi30k: which side of the captions
    field: str = "text"  # a table's or JSONL file's text field
    data_dir: str | None = None
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        check_split(self.valid_fraction, self.test_fraction)

    def load(self) -> tuple[list[str], list[str], list[str]]:
        """Train, valid and test texts: multi30k's own splits, or the file's lines split by seed."""
        if self.source in RECIPES:
            if self.lang not in MULTI30K_LANGS:
                raise DataError(f"multi30k has no language {self.lang!r}; choose from {', '.join(MULTI30K_LANGS)}")
            train, valid, test = (multi30k_side(self.lang, split, self.data_dir) for split in ("train", "val",
                                                                                               "test2016"))
            return train, valid, test
        texts = read_texts(self.source, self.field)
        train, valid, test = random_split(texts, self.valid_fraction, self.test_fraction, self.seed)
        if not valid or not test:
            raise DataError(f"{self.source}: too few texts ({len(texts)}) to split off validation and test")
        return train, valid, test


def read_texts(source: str, text_field: str = "text") -> list[str]:
    """Non-empty texts: a plain text file's lines (optionally .gz), or a field of a JSONL, CSV or TSV file."""
    path = Path(source)
    if not path.exists() and "/" not in source and "." not in source:
        raise DataError(f"unknown recipe {source!r}; recipes are {', '.join(RECIPES)}, or give a text file")
    formats = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if not formats or formats[-1] == ".txt" or formats[-1] not in (".jsonl", ".csv", ".tsv"):
        texts = [line.strip() for line in read_text(path).splitlines()]
    else:
        texts = [fields[0].strip() for fields, _ in read_records(path, [text_field])]
    texts = [t for t in texts if t]
    if not texts:
        raise DataError(f"{source}: no texts")
    return texts


@dataclass
class LMJob:
    """A language model's training job; `model.vocab_size` is the tokenizer's target size."""

    data: TextData
    out: Path
    model: LMConfig = field(default_factory=LMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    max_length: int = 256
    lowercase: bool = False
    weights_dtype: str = "float32"  # float16 halves the version's weights file (computed in float32 all the same)
    version: int | None = None
    work_dir: Path | None = None
    resume: bool = False
    kind = "lm"

    def __post_init__(self) -> None:
        check_at_least(MIN_VOCAB_SIZE, vocab_size=self.model.vocab_size)
        check_at_least(2, max_length=self.max_length)
        check_fraction(dropout=self.model.dropout)
        if self.weights_dtype not in WEIGHTS_DTYPES:
            raise UserError(f"--weights-dtype must be one of {', '.join(WEIGHTS_DTYPES)}, got {self.weights_dtype!r}")

    def load(self) -> Splits:
        return Splits(*self.data.load())

    def tokenizers_ready(self, work_dir: Path) -> bool:
        return (work_dir / TOKENIZER).is_file()

    def train_tokenizers(self, train: list[str], work_dir: Path) -> None:
        train_tokenizer(train, self.model.vocab_size, lowercase=self.lowercase).save(str(work_dir / TOKENIZER))

    def build(self, splits: Splits, work_dir: Path, device: str, main: bool) -> Built:
        encoder = TextEncoder.load(work_dir / TOKENIZER, self.max_length)
        cfg = replace(self.model, vocab_size=encoder.vocab_size)
        model = RNNLanguageModel(cfg)
        task = LMTask(encode(encoder, splits.train), encode(encoder, splits.valid), self, torch.device(device))
        summary = (f"training {cfg.cell} language model on {len(splits.train)} texts ({len(splits.valid)} valid, "
                   f"{len(splits.test)} test), vocab {encoder.vocab_size}, "
                   f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
        return Built(model, cfg.to_dict(), task, summary,
                     spec={"max_length": self.max_length, "weights_dtype": self.weights_dtype},
                     export_texts=splits.valid[:16])


def encode(encoder: TextEncoder, texts: Sequence[str]) -> list[list[int]]:
    """Each text as BOS, its pieces (at most max_length - 1) and EOS: the model reads all but the last and predicts
    all but the first."""
    return [[BOS_ID, *ids[: encoder.max_length - 1], EOS_ID] for ids in encoder.ids(texts)]


class LMTask:
    """Next-token cross-entropy (padding masked); validation perplexity per token drives early stopping."""

    unit = "tokens"

    def __init__(self, train: list[list[int]], valid: list[list[int]], job: LMJob, device: torch.device) -> None:
        self.train, self.valid, self.job, self.device = train, valid, job, device

    def train_batches(self, epoch: int, batch_size: int) -> Sequence[Batch]:
        groups = bucket_batches(self.train, batch_size, len, self.job.train.seed + epoch)
        return [self._batch(g) for g in groups]

    @staticmethod
    def _batch(group: Sequence[list[int]]) -> Batch:
        ids, lengths = to_tensors([s[:-1] for s in group])  # (B, T): BOS x_1 .. x_n
        targets, _ = to_tensors([s[1:] for s in group])  # (B, T): x_1 .. x_n EOS
        return {"ids": ids, "lengths": lengths, "targets": targets}

    def _loss(self, model: nn.Module, batch: Batch, reduction: str) -> tuple[Tensor, int]:
        logits, _ = model(batch["ids"].to(self.device), batch["lengths"].to(self.device))  # (B, T, V)
        targets = batch["targets"].to(self.device)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=PAD_ID,
                               reduction=reduction)
        return loss, int((targets != PAD_ID).sum())

    def step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        return self._loss(model, batch, "mean")

    def validate(self, model: nn.Module) -> dict[str, float]:
        total, tokens = 0.0, 0
        with torch.no_grad():
            for group in bucket_batches(self.valid, 128, len, 0, shuffle=False):
                loss, n = self._loss(model, self._batch(group), "sum")
                total, tokens = total + float(loss), tokens + n
        nll = total / max(tokens, 1)
        perplexity = math.exp(min(nll, 50.0))
        return {"score": -perplexity, "perplexity": perplexity, "loss": nll}


def export_run_files(spec: dict[str, Any], work_dir: Path, writer: VersionWriter,
                     sample_texts: Sequence[str]) -> dict[str, Any]:
    """The prompt and step graphs with their shared weights (checked against PyTorch) and the tokenizer."""
    model = RNNLanguageModel(LMConfig.from_dict(spec["model"]))
    load_model(model, str(work_dir / "best.safetensors"))
    writer.copy(work_dir / TOKENIZER, TOKENIZER)
    interface = export_lm(model.eval(), writer.path, str(spec.get("weights_dtype", "float32")))
    return {**interface, "tokenizers": {"text": TOKENIZER}}


def words_in(text: str) -> int:
    """Words for per-word perplexity: the whitespace-separated words and the end of the text (as EOS is a token)."""
    return len(text.split()) + 1


def evaluate_lm(version_dir: Path, texts: Sequence[str], batch_size: int = 64, reference: bool = True
                ) -> dict[str, Any]:
    """Perplexity per token (pieces and EOS) and per word through the ONNX graphs, and the same figures of a
    Kneser-Ney n-gram model trained on the recorded training split with the model's own tokens."""
    if not texts:
        raise UserError("no texts to evaluate")
    config = read_config(version_dir)
    runtime = LMRuntime(version_dir, config)
    total, tokens, words, truncated = 0.0, 0, 0, 0
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        for text, scored in zip(batch, runtime.score(batch), strict=True):
            total += scored.log_prob
            tokens += len(scored.log_probs)
            words += words_in(text)
            truncated += int(scored.truncated)
    figures: dict[str, Any] = {
        "perplexity": math.exp(-total / tokens), "word_perplexity": math.exp(-total / words),
        "log_prob": total, "tokens": tokens, "words": words, "texts": len(texts), "truncated": truncated}
    if reference:
        figures["reference"] = reference_figures(version_dir, config, runtime, texts)
        ref = figures["reference"]
        if "perplexity" in ref:
            figures["perplexity_vs_reference"] = figures["perplexity"] / ref["perplexity"]
    return figures


def reference_figures(version_dir: Path, config: dict[str, Any], runtime: LMRuntime, texts: Sequence[str]
                      ) -> dict[str, Any]:
    """The Kneser-Ney reference on the same texts and tokens (the order chosen on the validation split)."""
    from training.ngram import score

    try:
        model, chosen = _kneser_ney(str(version_dir.resolve()), _data_key(config))
    except (UserError, OSError, ValueError) as exc:
        return {"skipped": f"the recorded training data cannot be loaded ({exc})"}
    seqs = [runtime.item(t, "score").ids[1:] for t in texts]
    result = score(model, seqs)
    return {**chosen, "perplexity": result.perplexity,
            "word_perplexity": math.exp(-result.log_prob / sum(words_in(t) for t in texts)),
            "log_prob": result.log_prob, "tokens": result.tokens}


def _data_key(config: dict[str, Any]) -> str:
    provenance = config.get("provenance", {})
    return repr((provenance.get("source"), sorted((provenance.get("settings") or {}).items()),
                 sorted((provenance.get("files") or {}).items())))


@functools.lru_cache(maxsize=4)
def _kneser_ney(version_dir: str, data_key: str) -> tuple[Any, dict[str, Any]]:
    """Built once per version and data (evaluating valid and test shares it)."""
    from training.ngram import kneser_ney, score

    path = Path(version_dir)
    config = read_config(path)
    train, valid, _ = recorded_splits(config)
    runtime = LMRuntime(path, config)

    def ids(texts: Sequence[str]) -> list[list[int]]:
        return [runtime.item(t, "score").ids[1:] for t in texts]

    train_ids, valid_ids = ids(train), ids(valid)
    best: tuple[float, Any, int] | None = None
    by_order = {}
    for order in REFERENCE_ORDERS:
        model = kneser_ney(train_ids, runtime.encoder.vocab_size, order)
        perplexity = score(model, valid_ids).perplexity
        by_order[str(order)] = perplexity
        if best is None or perplexity < best[0]:
            best = (perplexity, model, order)
    assert best is not None
    return best[1], {"method": f"Kneser-Ney (nltk.lm KneserNeyInterpolated), order {best[2]}, chosen on the "
                               "validation split", "order": best[2], "valid_perplexity_by_order": by_order}


def recorded_splits(config: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    provenance = config.get("provenance", {})
    source = provenance.get("source")
    if not source:
        raise UserError("the model records no training data")
    settings = provenance.get("settings") or {}
    return TextData(source, **{k: v for k, v in settings.items() if k in TextData.__dataclass_fields__}).load()


def load_eval_texts(config: dict[str, Any], args: Any) -> Sequence[str]:
    """`seqserve evaluate` data for a language model: the recorded source's split, or every text of --data."""
    source, settings = recorded_data(config, args)
    if args.data is not None and args.data not in RECIPES:
        return read_texts(args.data, str(settings.get("field", "text")))
    data = TextData(source, **{k: v for k, v in settings.items() if k in TextData.__dataclass_fields__})
    train, valid, test = data.load()
    return choose_split({"train": train, "valid": valid, "test": test}, args.split)


def calibration_feeds(version_dir: Path, config: dict[str, Any], texts: Sequence[str]) -> dict[str, list[Feeds]]:
    """The prompt graph's feeds while the texts are scored, and the step graph's while each is continued."""
    runtime = LMRuntime(version_dir, config)
    prompt, step = Recorder(runtime.runner.prompt_session), Recorder(runtime.runner.step_session)
    runtime.runner.prompt_session, runtime.runner.step_session = prompt, step
    for batch in in_batches(texts, CALIBRATION_BATCH):
        runtime.score(batch)
        runtime.generate([" ".join(t.split()[:3]) for t in batch], SampleOptions(max_tokens=8, seed=0))
    return {"prompt": prompt.feeds, "step": step.feeds}


TOOLS = KindTools(export=export_run_files, evaluate=evaluate_lm, eval_data=load_eval_texts,
                  input_text=lambda text: str(text), calibration_feeds=calibration_feeds,
                  evaluate_after_quantize=True, evaluate_splits=("valid", "test"))
