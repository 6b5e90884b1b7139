"""Tagger training: tagged sentences -> tokenizer -> RNNTagger (slots, optional CRF and intent head) -> fit (the
shared job) -> ONNX -> entity-level F1 (seqeval), intent and sentence accuracy."""

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
from seqeval.metrics import classification_report as seqeval_report
from seqeval.metrics import f1_score, precision_score, recall_score
from torch import Tensor, nn

from models.tagger import RNNTagger, TaggerConfig
from service.engine.repository import read_config
from service.engine.tagger import TaggerRuntime
from service.engine.tags import OUTSIDE
from service.engine.text import TextEncoder, pad_batch
from service.errors import UserError
from training.batching import bucket_batches
from training.calibration import Feeds, one_graph_feeds
from training.data import DataError, random_split
from training.kind import Built, KindTools, Splits, choose_split, recorded_data
from training.loop import MIN_VOCAB_SIZE, Batch, TrainConfig, check_at_least, check_fraction, check_split
from training.repo_writer import VersionWriter
from training.tag_data import Sentence, atis, read_tagged
from training.tagger_export import export_tagger
from training.tokenizer import train_tokenizer

log = logging.getLogger("seqserve.train")

RECIPES = ("atis",)
TOKENIZER = "tokenizer.json"
CRF_FILE = "crf.npz"
IGNORE = -100


def sentence_text(sentence: Sentence) -> str:
    """The text a request would send for a sentence: its words with spaces between."""
    return " ".join(sentence.words)


@dataclass
class TaggedData:
    source: str  # a recipe (atis), an ATIS/SNIPS-style folder, a CoNLL file or a JSONL file
    data_dir: str | None = None  # the recipe's folder
    tag_column: int = -1  # CoNLL: the tag's column
    valid_path: str | None = None
    test_path: str | None = None
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        check_split(self.valid_fraction, self.test_fraction)

    def load(self) -> tuple[list[Sentence], list[Sentence], list[Sentence]]:
        """Train, valid and test sentences: the data's own splits, the user's split files, or a split by seed."""
        if self.source in RECIPES:
            splits = atis(self.data_dir)
        elif not Path(self.source).exists() and "/" not in self.source and "." not in self.source:
            raise DataError(f"unknown recipe {self.source!r}; recipes are {', '.join(RECIPES)}, or give a folder "
                            "(ATIS/SNIPS format), a CoNLL file or a JSONL file")
        else:
            read = read_tagged(self.source, self.tag_column)
            splits = read if isinstance(read, dict) else {"train": read}
        if self.valid_path or self.test_path:
            if not (self.valid_path and self.test_path):
                raise DataError("give both --valid-data and --test-data, or neither")
            splits = {"train": splits["train"], "valid": self._one(self.valid_path), "test": self._one(self.test_path)}
        train = splits["train"]
        if "valid" in splits and "test" in splits:
            return train, splits["valid"], splits["test"]
        # what the data does not split itself is split off its training sentences, by seed
        valid_fraction = 0.0 if "valid" in splits else self.valid_fraction
        test_fraction = 0.0 if "test" in splits else self.test_fraction
        train, valid, test = random_split(train, valid_fraction, test_fraction, self.seed)
        valid, test = splits.get("valid", valid), splits.get("test", test)
        if not valid or not test:
            raise DataError(f"{self.source}: too few sentences ({len(splits['train'])}) to split off validation and "
                            f"test (--valid-fraction {self.valid_fraction:g}, --test-fraction {self.test_fraction:g})")
        return train, valid, test

    def _one(self, path: str) -> list[Sentence]:
        read = read_tagged(path, self.tag_column)
        if isinstance(read, dict):
            raise DataError(f"{path}: a folder; --valid-data and --test-data take a CoNLL or JSONL file")
        return read


@dataclass
class Encoded:
    ids: list[int]
    first: list[int]  # the first piece of each kept word
    tags: list[int]  # per kept word; IGNORE for a tag the model does not know
    intent: int  # IGNORE without one
    gold: Sentence
    words: list[int]  # which of the gold words each kept word is


def encode_sentences(encoder: TextEncoder, sentences: Sequence[Sentence], tags: dict[str, int],
                     intents: dict[str, int]) -> list[Encoded]:
    """Pieces of each sentence's words (at most max_length, a word cut with its first piece) and the targets."""
    out = []
    encodings = encoder.tokenizer.encode_batch([list(s.words) for s in sentences], is_pretokenized=True,
                                               add_special_tokens=False)
    for sentence, enc in zip(sentences, encodings, strict=True):
        ids = enc.ids[:encoder.max_length]
        first: list[int] = []
        for pos, word in enumerate(enc.word_ids[:len(ids)]):
            if word is not None and word >= len(first):
                first.extend([-1] * (word - len(first)) + [pos])
        kept = [(w, p) for w, p in enumerate(first) if p >= 0] or [(0, 0)]
        out.append(Encoded(ids or [0], [p for _, p in kept], [tags.get(sentence.tags[w], IGNORE) for w, _ in kept],
                           intents.get(sentence.intent, IGNORE) if sentence.intent is not None else IGNORE, sentence,
                           [w for w, _ in kept]))
    return out


@dataclass
class TaggerJob:
    """A tagger's training job. The data decides the vocabulary size (the tokenizer's, at most
    `model.vocab_size`), the tags and whether there is an intent head (when the training sentences have intents)."""

    data: TaggedData
    out: Path
    model: TaggerConfig = field(default_factory=TaggerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    max_length: int = 256
    lowercase: bool = False
    version: int | None = None
    work_dir: Path | None = None
    resume: bool = False
    intent_weight: float = 1.0  # the intent loss's weight beside the slots'
    kind = "tagger"

    def __post_init__(self) -> None:
        m = self.model
        check_at_least(MIN_VOCAB_SIZE, vocab_size=m.vocab_size)
        check_at_least(1, max_length=self.max_length, emb_dim=m.emb_dim, hidden=m.hidden, layers=m.layers)
        check_fraction(dropout=m.dropout)
        check_at_least(0, intent_weight=self.intent_weight)

    def load(self) -> Splits:
        train, valid, test = self.data.load()
        known = {t for s in train for t in s.tags}
        unseen = sorted({t for s in valid + test for t in s.tags} - known)
        if unseen:
            log.warning("%d tags of the validation/test data never occur in training (%s); the model cannot "
                        "predict them", len(unseen), ", ".join(unseen[:8]) + (" ..." if len(unseen) > 8 else ""))
        return Splits(train, valid, test)

    def tokenizers_ready(self, work_dir: Path) -> bool:
        return (work_dir / TOKENIZER).is_file()

    def train_tokenizers(self, train: list[Sentence], work_dir: Path) -> None:
        tok = train_tokenizer((sentence_text(s) for s in train), self.model.vocab_size, self.lowercase)
        tok.save(str(work_dir / TOKENIZER))

    def build(self, splits: Splits, work_dir: Path, device: str, main: bool) -> Built:
        encoder = TextEncoder.load(work_dir / TOKENIZER, self.max_length)
        tags = sorted({t for s in splits.train for t in s.tags}, key=lambda t: (t != OUTSIDE, t))
        intents = sorted({s.intent for s in splits.train if s.intent is not None})
        if len(intents) == 1:
            log.warning("every training sentence has the intent %r: no intent head", intents[0])
            intents = []
        tag_index = {t: i for i, t in enumerate(tags)}
        intent_index = {t: i for i, t in enumerate(intents)}
        cfg = replace(self.model, vocab_size=encoder.vocab_size, num_tags=len(tags), num_intents=len(intents))
        model = RNNTagger(cfg)
        task = TaggerTask(encode_sentences(encoder, splits.train, tag_index, intent_index),
                          encode_sentences(encoder, splits.valid, tag_index, intent_index), tags,
                          self.train.seed, torch.device(device), self.intent_weight)
        summary = (f"training {cfg.cell} tagger{' with a CRF' if cfg.crf else ''}"
                   f"{f' and {len(intents)} intents' if intents else ''} on {len(splits.train)} sentences "
                   f"({len(splits.valid)} valid, {len(splits.test)} test), {len(tags)} tags, "
                   f"vocab {encoder.vocab_size}")
        return Built(model, cfg.to_dict(), task, summary,
                     spec={"tags": tags, "intents": intents, "max_length": self.max_length},
                     record={"intent_weight": self.intent_weight},
                     export_texts=[sentence_text(s) for s in splits.test])


def word_emissions(emissions: Tensor, first: Tensor) -> Tensor:
    """The emissions (B, T, K) at each word's first piece: (B, W, K)."""
    return emissions.gather(1, first[..., None].expand(-1, -1, emissions.size(2)))


def decode(model: RNNTagger, emissions: Tensor, mask: Tensor) -> list[list[int]]:
    """Best tags per row's words: Viterbi with a CRF, else each word's argmax."""
    if model.crf is not None:
        return model.crf.viterbi(emissions, mask)
    best = emissions.argmax(-1)
    return [best[b, :n].tolist() for b, n in enumerate(mask.sum(1).tolist())]


class TaggerTask:
    """The CRF's negative log-likelihood (or cross-entropy) per word, plus the intent's cross-entropy; validation
    slot F1 (entity level, seqeval) is the early-stopping score."""

    unit = "tokens"

    def __init__(self, train: list[Encoded], valid: list[Encoded], tags: list[str], seed: int, device: torch.device,
                 intent_weight: float = 1.0) -> None:
        self.train, self.valid, self.tags, self.seed, self.device = train, valid, tags, seed, device
        self.intent_weight = intent_weight

    def train_batches(self, epoch: int, batch_size: int) -> Sequence[Batch]:
        groups = bucket_batches(self.train, batch_size, lambda e: len(e.ids), self.seed + epoch)
        return [self._batch(g) for g in groups]

    @staticmethod
    def _batch(group: Sequence[Encoded]) -> Batch:
        ids, lengths = pad_batch([e.ids for e in group])
        words = max(len(e.first) for e in group)
        first = torch.zeros(len(group), words, dtype=torch.long)
        tags = torch.full((len(group), words), IGNORE, dtype=torch.long)
        for row, e in enumerate(group):
            first[row, :len(e.first)] = torch.tensor(e.first)
            tags[row, :len(e.tags)] = torch.tensor(e.tags)
        mask = torch.arange(words)[None, :] < torch.tensor([len(e.first) for e in group])[:, None]
        return {"ids": torch.from_numpy(ids), "lengths": torch.from_numpy(lengths), "first": first, "tags": tags,
                "mask": mask, "intent": torch.tensor([e.intent for e in group])}

    def _forward(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor, Tensor | None]:
        b = {k: v.to(self.device) for k, v in batch.items()}
        outputs = model(b["ids"], b["lengths"])
        em = word_emissions(outputs[0], b["first"])
        return em, b["mask"], outputs[1] if len(outputs) > 1 else None

    def step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        core: RNNTagger = getattr(model, "module", model)
        em, mask, intent_logits = self._forward(model, batch)
        tags = batch["tags"].to(self.device)
        known = tags != IGNORE
        if core.crf is not None:
            # a tag the model does not know (only in the user's split files) scores as O in the CRF's path
            nll = core.crf.nll(em, tags.clamp_min(0), mask)
            loss = nll.sum() / mask.sum()
        else:
            loss = F.cross_entropy(em[known], tags[known])
        if intent_logits is not None:
            intent = batch["intent"].to(self.device)
            if bool((intent != IGNORE).any()):
                if core.token_intent_logits is not None:  # token-level intent: every piece learns the intent
                    lengths = batch["lengths"].to(self.device)
                    pieces = core.token_intent_logits
                    valid = torch.arange(pieces.size(1), device=self.device)[None, :] < lengths[:, None]
                    target = intent[:, None].expand(-1, pieces.size(1))[valid]
                    intent_loss = F.cross_entropy(pieces[valid], target, ignore_index=IGNORE)
                else:
                    intent_loss = F.cross_entropy(intent_logits, intent, ignore_index=IGNORE)
                loss = loss + self.intent_weight * intent_loss
        return loss, int(batch["lengths"].sum())

    def validate(self, model: nn.Module) -> dict[str, float]:
        core: RNNTagger = getattr(model, "module", model)
        gold, pred, intents_right, intents_total, loss, words = [], [], 0, 0, 0.0, 0
        for group in bucket_batches(self.valid, 256, lambda e: len(e.ids), 0, shuffle=False):
            batch = self._batch(group)
            em, mask, intent_logits = self._forward(model, batch)
            for e, path in zip(group, decode(core, em, mask), strict=True):
                tags = [self.tags[k] for k in path]
                gold.append(list(e.gold.tags))
                aligned = [OUTSIDE] * len(e.gold.tags)  # words cut or without a piece are outside
                for w, tag in zip(e.words, tags, strict=True):
                    aligned[w] = tag
                pred.append(aligned)
            tags = batch["tags"].to(self.device)
            known = tags != IGNORE
            loss += float(F.cross_entropy(em[known], tags[known], reduction="sum"))
            words += int(known.sum())
            if intent_logits is not None:
                intent = batch["intent"].to(self.device)
                has = intent != IGNORE
                intents_right += int((intent_logits.argmax(-1) == intent)[has].sum())
                intents_total += int(has.sum())
        f1 = float(f1_score(gold, pred))
        figures = {"score": f1, "slot_f1": f1, "loss": loss / max(words, 1)}
        if intents_total:
            figures["intent_accuracy"] = intents_right / intents_total
        return figures


def export_run_files(spec: dict[str, Any], work_dir: Path, writer: VersionWriter,
                     sample_texts: Sequence[str]) -> dict[str, Any]:
    """The tagger graph (checked against PyTorch), its tokenizer and its CRF's scores, for config.json."""
    model = RNNTagger(TaggerConfig.from_dict(spec["model"]))
    load_model(model, str(work_dir / "best.safetensors"))
    writer.copy(work_dir / TOKENIZER, TOKENIZER)
    encoder = TextEncoder.load(work_dir / TOKENIZER, int(spec["max_length"]))
    interface = export_tagger(model.eval(), writer.path / "model.onnx", encoder, sample_texts)
    files: dict[str, Any] = {"graphs": {"model": "model.onnx"}, "tokenizers": {"source": TOKENIZER}, **interface}
    if model.crf is not None:
        np.savez(writer.path / CRF_FILE, **{k: getattr(model.crf, k).detach().numpy()
                                            for k in ("start", "transitions", "end")})
        files["files"] = {"crf": CRF_FILE}
    return files


def evaluate_tagger(version_dir: Path, sentences: Sequence[Sentence], batch_size: int = 128) -> dict[str, Any]:
    """Entity-level slot precision, recall and F1 (seqeval, as conlleval counts), a per-slot report, intent accuracy
    and sentence accuracy (every tag and the intent right), through the ONNX graph on the gold words."""
    runtime = TaggerRuntime(version_dir, read_config(version_dir))
    if not sentences:
        raise UserError("no sentences to evaluate")
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i].words))  # similar lengths per batch
    predicted: list[Any] = [None] * len(sentences)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        for i, tagged in zip(rows, runtime.tag_words([sentences[i].words for i in rows]), strict=True):
            predicted[i] = tagged
    gold = [list(s.tags) for s in sentences]
    pred = [t.tags + [OUTSIDE] * (len(g) - len(t.tags)) for t, g in zip(predicted, gold, strict=True)]
    report = seqeval_report(gold, pred, output_dict=True, zero_division=0)
    per_slot = {label: {k: round(float(v), 4) for k, v in figures.items()}
                for label, figures in report.items() if not label.endswith(" avg")}
    figures: dict[str, Any] = {
        "slot_precision": float(precision_score(gold, pred, zero_division=0)),
        "slot_recall": float(recall_score(gold, pred, zero_division=0)),
        "slot_f1": float(f1_score(gold, pred, zero_division=0)),
        "sentences": len(sentences),
    }
    with_intent = [i for i, s in enumerate(sentences) if s.intent is not None]
    slots_right = [g == p for g, p in zip(gold, pred, strict=True)]
    if runtime.intents and with_intent:
        intent_right = [predicted[i].intent == sentences[i].intent for i in range(len(sentences))]
        figures["intent_accuracy"] = float(np.mean([intent_right[i] for i in with_intent]))
        figures["sentence_accuracy"] = float(np.mean([slots_right[i] and intent_right[i] for i in with_intent]))
    else:
        figures["sentence_accuracy"] = float(np.mean(slots_right))
    figures["per_slot"] = per_slot
    return figures


def load_eval_data(config: dict[str, Any], args: Any) -> Sequence[Sentence]:
    """`seqserve evaluate` data for a tagger: the recorded source and its split, or the data given (a file: all of
    it; a folder: its --split)."""
    source, settings = recorded_data(config, args)
    if args.data is not None and args.data not in RECIPES:
        read = read_tagged(args.data, int(getattr(args, "tag_column", None) or settings.get("tag_column", -1)))
        if not isinstance(read, dict):
            return read
        splits = read
    else:
        data = TaggedData(source, **{k: v for k, v in settings.items() if k in TaggedData.__dataclass_fields__})
        train, valid, test = data.load()
        splits = {"train": train, "valid": valid, "test": test}
    return choose_split(splits, args.split)


def calibration_feeds(version_dir: Path, config: dict[str, Any], texts: Sequence[str]) -> dict[str, list[Feeds]]:
    """The tagger graph's feeds for the texts, split into words and batched as the service does."""
    runtime = TaggerRuntime(version_dir, config)
    return one_graph_feeds(runtime, runtime.tag_texts, texts)


TOOLS = KindTools(export=export_run_files, evaluate=evaluate_tagger, eval_data=load_eval_data,
                  input_text=sentence_text, calibration_feeds=calibration_feeds, evaluate_after_quantize=True)
