"""Translator training and evaluation: pairs -> subword tokenizers -> Seq2Seq -> fit (the shared job) -> ONNX ->
BLEU/chrF."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_model
from torch import Tensor, nn

from models.seq2seq import Seq2Seq, Seq2SeqConfig, greedy_decode
from service.engine.decoding import max_output_length
from service.engine.repository import read_config
from service.engine.text import BOS_ID, PAD_ID, TextEncoder, script_converter
from service.engine.translator import DecodeOptions, TranslatorRuntime
from service.errors import UserError
from training.batching import bucket_batches, to_tensors
from training.calibration import CALIBRATION_BATCH, Feeds, Recorder, in_batches
from training.data import DataError, Pair, filter_pairs, random_split, read_parallel_files, read_parallel_table
from training.kind import Built, KindTools, Splits
from training.lexicon import LEXICONS, lexicon_pairs
from training.loop import MIN_VOCAB_SIZE, Batch, TrainConfig, check_at_least, check_fraction, check_split
from training.recipes import multi30k
from training.repo_writer import VersionWriter
from training.seq2seq_export import export_seq2seq
from training.tokenizer import train_tokenizer

log = logging.getLogger("seqserve.train")
Encoded = tuple[list[int], list[int]]  # (source ids + EOS, target ids + EOS)
SIZE_OPTIONS = {"emb_dim": "emb_dim", "enc_hidden": "hidden", "enc_layers": "layers", "dec_hidden": "dec_hidden",
                "dec_layers": "dec_layers"}  # Seq2SeqConfig field -> CLI option
TOKENIZERS = ("source_tokenizer.json", "target_tokenizer.json")


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
    src_script: str | None = None  # an OpenCC conversion (t2s, ...) for each side's texts, in training and serving
    tgt_script: str | None = None
    valid_pairs: int = 0  # held-out counts instead of the fractions (0: use the fractions)
    test_pairs: int = 0
    lexicon: str | None = None  # dictionary entries added to the training pairs (training/lexicon.py)

    def __post_init__(self) -> None:
        check_split(self.valid_fraction, self.test_fraction)
        check_at_least(1, max_words=self.max_words, max_ratio=self.max_ratio)
        check_at_least(0, valid_pairs=self.valid_pairs, test_pairs=self.test_pairs)
        if self.lexicon is not None and self.lexicon not in LEXICONS:
            raise UserError(f"--lexicon must be one of {', '.join(LEXICONS)}, got {self.lexicon!r}")
        for flag, script in (("--src-script", self.src_script), ("--tgt-script", self.tgt_script)):
            try:
                script_converter(script) if script else None
            except ValueError as exc:
                raise UserError(f"{flag}: {exc}") from None

    @property
    def scripts(self) -> dict[str, str]:
        """config.json's record of the conversions, by side."""
        return {side: s for side, s in (("source", self.src_script), ("target", self.tgt_script)) if s}

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
            src_convert, tgt_convert = script_converter(self.src_script), script_converter(self.tgt_script)
            if self.target_path:
                pairs = read_parallel_files(self.source, self.target_path)
                pairs = [Pair(src_convert(p.src) if src_convert else p.src,
                              tgt_convert(p.tgt) if tgt_convert else p.tgt) for p in pairs]
            elif Path(self.source).exists() or "." in self.source:
                pairs = read_parallel_table(self.source, self.src_field, self.tgt_field, src_convert, tgt_convert)
            else:
                raise DataError(f"unknown recipe {self.source!r}; recipes are multi30k, or give a file path")
            valid_share = self.valid_pairs / len(pairs) if self.valid_pairs else self.valid_fraction
            test_share = self.test_pairs / len(pairs) if self.test_pairs else self.test_fraction
            if valid_share + test_share >= 1:
                raise DataError(f"{self.source}: {len(pairs)} pairs leave none to train on after the held-out "
                                f"{round(valid_share * len(pairs))} validation and {round(test_share * len(pairs))} "
                                "test pairs")
            train, valid, test = random_split(pairs, valid_share, test_share, self.seed)
            if not valid or not test:
                raise DataError(f"{self.source}: too few pairs ({len(pairs)}) to split off validation and test")
        if self.lexicon:
            extra = lexicon_pairs(self.lexicon, train, self.languages(), script_converter(self.src_script))
            log.info("%s: %d dictionary pairs added to the %d training pairs", self.lexicon, len(extra), len(train))
            train = [*train, *extra]
        return filter_pairs(train, self.max_words, self.max_ratio, self.source), valid, test


@dataclass
class TranslatorJob:
    """A translator's training job. `model` is built once from the options (`src_vocab`/`tgt_vocab` are the
    tokenizers' target size); the tokenizers decide the vocabulary sizes the model gets."""

    data: ParallelData
    out: Path
    model: Seq2SeqConfig = field(default_factory=lambda: Seq2SeqConfig(src_vocab=8000, tgt_vocab=8000))
    train: TrainConfig = field(default_factory=TrainConfig)
    shared_vocab: bool = True
    max_length: int = 128
    label_smoothing: float = 0.1
    teacher_forcing: float = 1.0
    valid_bleu_sentences: int = 500
    version: int | None = None
    work_dir: Path | None = None
    resume: bool = False
    kind = "translator"

    def __post_init__(self) -> None:
        check_at_least(MIN_VOCAB_SIZE, vocab_size=self.model.src_vocab)
        check_at_least(1, max_length=self.max_length,
                       **{option: getattr(self.model, key) for key, option in SIZE_OPTIONS.items()})
        check_fraction(label_smoothing=self.label_smoothing, dropout=self.model.dropout)
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise UserError(f"--teacher-forcing is a probability (0 to 1), got {self.teacher_forcing}")
        if self.model.share_embeddings and not self.shared_vocab:
            raise UserError("--share-embeddings needs the shared vocabulary; drop --separate-vocab")

    def load(self) -> Splits:
        return Splits(*self.data.load())

    def tokenizers_ready(self, work_dir: Path) -> bool:
        return all((work_dir / name).is_file() for name in TOKENIZERS)

    def train_tokenizers(self, train: list[Pair], work_dir: Path) -> None:
        src_path, tgt_path = (work_dir / name for name in TOKENIZERS)
        size = self.model.src_vocab
        if self.shared_vocab:
            shared = train_tokenizer([p.src for p in train] + [p.tgt for p in train], size)
            shared.save(str(src_path))
            shared.save(str(tgt_path))
        else:
            train_tokenizer((p.src for p in train), size).save(str(src_path))
            train_tokenizer((p.tgt for p in train), size).save(str(tgt_path))

    def build(self, splits: Splits, work_dir: Path, device: str, main: bool) -> Built:
        scripts = self.data.scripts
        source, target = (TextEncoder.load(work_dir / name, self.max_length, scripts.get(side))
                          for name, side in zip(TOKENIZERS, ("source", "target"), strict=True))

        def encode(pairs: list[Pair]) -> list[Encoded]:
            srcs = source.ids([p.src for p in pairs], add_eos=True)
            tgts = target.ids([p.tgt for p in pairs], add_eos=True)
            return list(zip(srcs, tgts, strict=True))

        cfg = replace(self.model, src_vocab=source.vocab_size, tgt_vocab=target.vocab_size)
        model = Seq2Seq.from_config(cfg)
        task = TranslatorTask(encode(splits.train), encode(splits.valid), target, self, torch.device(device))
        summary = (f"training {cfg.cell} translator ({cfg.attention} attention) on {len(splits.train)} pairs "
                   f"({len(splits.valid)} valid, {len(splits.test)} test), vocab {source.vocab_size}/"
                   f"{target.vocab_size}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
        src_lang, tgt_lang = self.data.languages()  # --pair: the segmenter's rules and the gaps between sentences
        spec: dict[str, Any] = {"max_length": self.max_length, "source_eos": True,
                                "languages": {"source": src_lang, "target": tgt_lang}}
        if scripts:
            spec["scripts"] = scripts
        return Built(model, cfg.to_dict(), task, summary, spec=spec,
                     record={"label_smoothing": self.label_smoothing, "teacher_forcing": self.teacher_forcing})


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


def export_run_files(spec: dict[str, Any], work_dir: Path, writer: VersionWriter,
                     sample_texts: Sequence[str]) -> dict[str, Any]:
    """The encoder and decoder-step graphs (checked against PyTorch) and the tokenizers, for config.json."""
    cfg = Seq2SeqConfig.from_dict(spec["model"])
    model = Seq2Seq.from_config(cfg)
    load_model(model, str(work_dir / "best.safetensors"))
    writer.copy(work_dir / "source_tokenizer.json", "source_tokenizer.json")
    writer.copy(work_dir / "target_tokenizer.json", "target_tokenizer.json")
    interface = export_seq2seq(model.eval(), cfg, writer.path)
    return {**interface, "tokenizers": {"source": "source_tokenizer.json", "target": "target_tokenizer.json"}}


def evaluate_translator(version_dir: Path, pairs: Sequence[Pair], beam_size: int = 5, plot_attention: int = 0,
                        batch_size: int = 64, shortlist: bool = True) -> dict[str, Any]:
    """BLEU and chrF (sacrebleu, detokenized) of beam search and of greedy decoding through the ONNX graphs (over
    the lexical shortlist when the model has one, unless `shortlist` is false)."""
    import sacrebleu

    runtime = TranslatorRuntime(version_dir, read_config(version_dir))
    runtime.use_shortlist = shortlist and runtime.shortlist is not None
    refs = [p.tgt for p in pairs]
    figures: dict[str, Any] = {"examples": len(pairs), "beam_size": beam_size, "shortlist": runtime.use_shortlist}
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
    splits = named_splits(data)
    if args.split not in splits:
        raise DataError(f"--split must be one of {', '.join(splits)}, got {args.split!r}")
    return splits[args.split]


def named_splits(data: ParallelData) -> dict[str, list[Pair]]:
    """The data's splits under every name `--split` takes (Multi30k's val and test2016 too), loaded once."""
    train, valid, test = data.load()
    return {"train": train, "valid": valid, "val": valid, "test": test, "test2016": test}


def recorded_splits(config: dict[str, Any]) -> dict[str, list[Pair]]:
    """The splits of the data a translator version records having been trained on."""
    settings = dict(config.get("provenance", {}).get("settings", {}))
    source = config.get("provenance", {}).get("source")
    return named_splits(ParallelData(source, **{k: v for k, v in settings.items()
                                                if k in ParallelData.__dataclass_fields__}))


def calibration_feeds(version_dir: Path, config: dict[str, Any], texts: Sequence[str]) -> dict[str, list[Feeds]]:
    """The encoder's and every decoder step's feeds while the float model translates the texts (greedy)."""
    runtime = TranslatorRuntime(version_dir, config)
    runtime.use_shortlist = False  # the full step graph is calibrated; the shortlist graph is made from it
    encoder, decoder = Recorder(runtime.runner.encoder), Recorder(runtime.runner.decoder)
    runtime.runner.encoder, runtime.runner.decoder = encoder, decoder
    for batch in in_batches(texts, CALIBRATION_BATCH):
        runtime.translate(batch, DecodeOptions(beam_size=1))
    return {"encoder": encoder.feeds, "decoder": decoder.feeds}


TOOLS = KindTools(export=export_run_files, evaluate=evaluate_translator, eval_data=load_eval_pairs,
                  input_text=lambda pair: pair.src, calibration_feeds=calibration_feeds,
                  eval_options=("beam_size", "plot_attention", "shortlist"))
