"""Translator training and evaluation: pairs -> subword tokenizers -> Seq2Seq -> fit -> ONNX -> BLEU/chrF."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.seq2seq import Seq2Seq, Seq2SeqConfig, greedy_decode
from service.decoding import max_output_length
from service.errors import UserError
from service.text import BOS_ID, EOS_ID, PAD_ID, TextEncoder
from training.batching import bucket_batches, to_tensors
from training.data import DataError, Pair, filter_pairs, random_split, read_parallel_files, read_parallel_table
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
from training.recipes import multi30k
from training.repo_writer import VersionWriter, data_provenance, save_run_spec
from training.tokenizer import train_tokenizer

log = logging.getLogger("seqserve.train")
Encoded = tuple[list[int], list[int]]  # (source ids + EOS, target ids + EOS)
SIZE_OPTIONS = {"emb_dim": "emb_dim", "enc_hidden": "hidden", "enc_layers": "layers", "dec_hidden": "dec_hidden",
                "dec_layers": "dec_layers"}  # Seq2SeqConfig field -> CLI option


@dataclass
class ParallelData:
    source: str  # "multi30k", a TSV/CSV/JSONL table, or the source-side text file (with target_path)
    target_path: str | None = None
    pair: str = "en-de"
    data_dir: str | None = None
    src_field: str = "0"
    tgt_field: str = "1"
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0
    max_words: int = 80
    max_ratio: float = 3.0

    def __post_init__(self) -> None:
        check_split(self.valid_fraction, self.test_fraction)
        check_at_least(1, max_words=self.max_words, max_ratio=self.max_ratio)

    def languages(self) -> tuple[str, str]:
        parts = self.pair.split("-")
        if len(parts) != 2 or not all(parts):
            raise DataError(f"--pair must look like en-de, got {self.pair!r}")
        return parts[0], parts[1]

    def load(self) -> tuple[list[Pair], list[Pair], list[Pair]]:
        """Train (length-filtered), valid and test pairs."""
        if self.source == "multi30k":
            src, tgt = self.languages()
            train, valid, test = (multi30k(src, tgt, split, self.data_dir) for split in ("train", "val", "test2016"))
        else:
            if self.target_path:
                pairs = read_parallel_files(self.source, self.target_path)
            elif Path(self.source).exists() or "." in self.source:
                pairs = read_parallel_table(self.source, self.src_field, self.tgt_field)
            else:
                raise DataError(f"unknown recipe {self.source!r}; recipes are multi30k, or give a file path")
            train, valid, test = random_split(pairs, self.valid_fraction, self.test_fraction, self.seed)
            if not valid or not test:
                raise DataError(f"{self.source}: too few pairs ({len(pairs)}) to split off validation and test")
        return filter_pairs(train, self.max_words, self.max_ratio, self.source), valid, test


@dataclass
class TranslatorJob:
    data: ParallelData
    out: Path
    model: dict[str, Any] = field(default_factory=dict)  # Seq2SeqConfig fields other than vocab sizes
    train: TrainConfig = field(default_factory=TrainConfig)
    vocab_size: int = 8000
    shared_vocab: bool = True
    max_length: int = 128
    label_smoothing: float = 0.1
    teacher_forcing: float = 1.0
    valid_bleu_sentences: int = 500
    version: int | None = None
    work_dir: Path | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        check_at_least(MIN_VOCAB_SIZE, vocab_size=self.vocab_size)
        check_at_least(1, max_length=self.max_length,
                       **{option: self.model[key] for key, option in SIZE_OPTIONS.items() if key in self.model})
        check_fraction(label_smoothing=self.label_smoothing, **{k: v for k, v in self.model.items() if k == "dropout"})
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise UserError(f"--teacher-forcing is a probability (0 to 1), got {self.teacher_forcing}")
        self._check_model_options()

    def _check_model_options(self) -> None:
        """Seq2SeqConfig's own rules, before any data is read (the vocabulary size stands in for the tokenizers'),
        plus the one it cannot see: shared embeddings need the shared vocabulary."""
        try:
            Seq2SeqConfig(src_vocab=self.vocab_size, tgt_vocab=self.vocab_size, **self.model)
        except ValueError as exc:
            raise UserError(f"model options: {exc}") from None
        if self.model.get("share_embeddings") and not self.shared_vocab:
            raise UserError("--share-embeddings needs the shared vocabulary; drop --separate-vocab")


class TranslatorTask:
    """Token-level cross-entropy (padding masked, label smoothing); validation BLEU drives early stopping."""

    unit = "tokens"

    def __init__(self, train: list[Encoded], valid: list[Encoded], target: TextEncoder, job: TranslatorJob,
                 device: torch.device) -> None:
        self.train, self.valid, self.target, self.job, self.device = train, valid, target, job, device

    def train_batches(self, epoch: int, batch_size: int) -> Sequence[Batch]:
        groups = bucket_batches(self.train, batch_size, lambda e: len(e[0]), self.job.train.seed + epoch)
        return [self._batch(g) for g in groups]

    def _batch(self, group: Sequence[Encoded]) -> Batch:
        src, src_len = to_tensors([g[0] for g in group])
        tgt_in, _ = to_tensors([[BOS_ID, *g[1][:-1]] for g in group])  # (B, T) BOS y_1 .. y_n
        tgt_out, _ = to_tensors([g[1] for g in group])  # (B, T) y_1 .. y_n EOS
        return {"src": src, "src_lengths": src_len, "tgt_in": tgt_in, "tgt_out": tgt_out}

    def step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        logits = model(batch["src"].to(self.device), batch["src_lengths"].to(self.device),
                       batch["tgt_in"].to(self.device), teacher_forcing=self.job.teacher_forcing)  # (B, T, V)
        gold = batch["tgt_out"].to(self.device)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), gold.reshape(-1), ignore_index=PAD_ID,
                               label_smoothing=self.job.label_smoothing)
        return loss, int((gold != PAD_ID).sum())

    def validate(self, model: nn.Module) -> dict[str, float]:
        import sacrebleu

        loss, tokens, hyps, refs = 0.0, 0, [], []
        sample = self.valid[: self.job.valid_bleu_sentences]
        for group in bucket_batches(self.valid, 128, lambda e: len(e[0]), 0, shuffle=False):
            batch = {k: v.to(self.device) for k, v in self._batch(group).items()}
            logits = model(batch["src"], batch["src_lengths"], batch["tgt_in"])
            gold = batch["tgt_out"]
            loss += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), gold.reshape(-1),
                                          ignore_index=PAD_ID, reduction="sum"))
            tokens += int((gold != PAD_ID).sum())
        for group in bucket_batches(sample, 128, lambda e: len(e[0]), 0, shuffle=False):
            batch = {k: v.to(self.device) for k, v in self._batch(group).items()}
            max_lens = [max_output_length(len(g[0])) for g in group]
            hyps += [self.target.decode(ids) for ids in greedy_decode(model, batch["src"], batch["src_lengths"],
                                                                      max_lens)]
            refs += [self.target.decode(g[1][:-1]) for g in group]
        bleu = sacrebleu.corpus_bleu(hyps, [refs]).score
        return {"score": bleu, "bleu_greedy": bleu, "loss": loss / max(tokens, 1)}


def _tokenizers(job: TranslatorJob, train: list[Pair], work_dir: Path) -> tuple[Path, Path]:
    src_path, tgt_path = work_dir / "source_tokenizer.json", work_dir / "target_tokenizer.json"
    if job.resume and src_path.is_file() and tgt_path.is_file():
        return src_path, tgt_path
    if job.shared_vocab:
        texts = [p.src for p in train] + [p.tgt for p in train]
        shared = train_tokenizer(texts, job.vocab_size)
        shared.save(str(src_path))
        shared.save(str(tgt_path))
    else:
        train_tokenizer((p.src for p in train), job.vocab_size).save(str(src_path))
        train_tokenizer((p.tgt for p in train), job.vocab_size).save(str(tgt_path))
    return src_path, tgt_path


def train_translator(job: TranslatorJob) -> Path | None:
    """Train, export, evaluate with beam search; returns the new version folder (on the main process)."""
    env = init_distributed(job.train.device)
    work_dir = job.work_dir or Path("runs") / job.out.name
    prepare_work_dir(work_dir, job.resume)
    train, valid, test = job.data.load()
    if env.main:
        _tokenizers(job, train, work_dir)
    env.barrier()
    source = TextEncoder.load(work_dir / "source_tokenizer.json", job.max_length)
    target = TextEncoder.load(work_dir / "target_tokenizer.json", job.max_length)

    def encode(pairs: list[Pair]) -> list[Encoded]:
        srcs = source.ids([p.src for p in pairs], add_eos=True)
        tgts = target.ids([p.tgt for p in pairs], add_eos=True)
        return list(zip(srcs, tgts, strict=True))

    seed_everything(job.train.seed)
    cfg = Seq2SeqConfig(src_vocab=source.vocab_size, tgt_vocab=target.vocab_size, **job.model)
    model = Seq2Seq.from_config(cfg)
    device = torch.device("cuda" if job.train.device.startswith("cuda") else "cpu")
    task = TranslatorTask(encode(train), encode(valid), target, job, device)
    if job.resume:
        check_same_model(work_dir, cfg.to_dict())
        env.barrier()  # every process has read model.json before the main one rewrites it
    if env.main:
        log.info("training %s translator (%s attention) on %d pairs (%d valid, %d test), vocab %d/%d, "
                 "%.1fM parameters", cfg.cell, cfg.attention, len(train), len(valid), len(test), source.vocab_size,
                 target.vocab_size, sum(p.numel() for p in model.parameters()) / 1e6)
        save_run_spec(work_dir, kind="translator", model=cfg.to_dict(), max_length=job.max_length, source_eos=True,
                      provenance=data_provenance(job.data.source, job.data, len(train), len(valid), len(test)))
    history = fit(model, task, job.train, work_dir, env, resume=job.resume)
    if not env.main:
        return None
    version_dir = export_run(work_dir, job.out, job.version,
                             training={**vars(job.train), "label_smoothing": job.label_smoothing,
                                       "teacher_forcing": job.teacher_forcing, "best_epoch": history.best_epoch + 1,
                                       "history": history.epochs})
    evaluate_version(version_dir, test, split="test")
    VersionWriter(version_dir).write_card()
    return version_dir


def evaluate_translator(version_dir: Path, pairs: Sequence[Pair], beam_size: int = 5, plot_attention: int = 0,
                        batch_size: int = 64) -> dict[str, Any]:
    """BLEU and chrF (sacrebleu, detokenized) of beam search and of greedy decoding through the ONNX graphs."""
    import sacrebleu

    from service.repository import read_config
    from service.translator import DecodeOptions, TranslatorRuntime

    runtime = TranslatorRuntime(version_dir, read_config(version_dir))
    refs = [p.tgt for p in pairs]
    figures: dict[str, Any] = {"examples": len(pairs), "beam_size": beam_size}
    for name, beam in (("beam", beam_size), ("greedy", 1)):
        options = DecodeOptions(beam_size=beam)
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].src))
        outputs: list[Any] = [None] * len(pairs)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            for i, t in zip(rows, runtime.translate([pairs[i].src for i in rows], options), strict=True):
                outputs[i] = t
        hyps = [t.text for t in outputs]
        bleu_metric, chrf_metric = sacrebleu.BLEU(), sacrebleu.CHRF()
        bleu, chrf = bleu_metric.corpus_score(hyps, [refs]), chrf_metric.corpus_score(hyps, [refs])
        prefix = "" if name == "beam" else "greedy_"
        figures.update({f"{prefix}bleu": bleu.score, f"{prefix}chrf": chrf.score})
        if name == "beam":
            figures["bleu_signature"] = str(bleu_metric.get_signature())
            figures["samples"] = [{"source": p.src, "reference": p.tgt, "output": h}
                                  for p, h in list(zip(pairs, hyps, strict=True))[:5]]
            if plot_attention:
                from training.plots import plot_attention_maps

                plot_attention_maps(outputs[:plot_attention], version_dir / "attention")
    return figures


def load_eval_pairs(config: dict[str, Any], args: Any) -> list[Pair]:
    """`seqserve evaluate` data for a translator: the recorded source and its split, or --data/--target-data."""
    settings = dict(config.get("provenance", {}).get("settings", {}))
    source = args.data or config.get("provenance", {}).get("source")
    if args.data is not None and args.data != "multi30k":
        settings.pop("target_path", None)
    if getattr(args, "target_data", None):
        settings["target_path"] = args.target_data
    if getattr(args, "pair", None):
        settings["pair"] = args.pair
    data = ParallelData(source, **{k: v for k, v in settings.items() if k in ParallelData.__dataclass_fields__})
    if args.data is not None and args.data != "multi30k":
        pairs = (read_parallel_files(source, data.target_path) if data.target_path
                 else read_parallel_table(source, data.src_field, data.tgt_field))
        return pairs
    train, valid, test = data.load()
    splits = {"train": train, "valid": valid, "val": valid, "test": test, "test2016": test}
    if args.split not in splits:
        raise DataError(f"--split must be one of {', '.join(splits)}, got {args.split!r}")
    return splits[args.split]


__all__ = ["EOS_ID", "ParallelData", "TranslatorJob", "evaluate_translator", "load_eval_pairs", "train_translator"]
