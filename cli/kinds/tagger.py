"""`seqserve train tagger`: its options, and the job they make (training is imported only when it runs)."""

from __future__ import annotations

import argparse
from typing import Any

from cli.common import model_config, train_config, train_options


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="recipe (atis), a folder in the ATIS/SNIPS format ({train,dev,test}.seq.in/.seq.out/.label), "
                   "a CoNLL file or a JSONL file ({text, spans: [{start, end, label}], intent})")
    p.add_argument("--data-dir", help="the atis recipe's folder (default: $SEQSERVE_ATIS_DIR or ../shared/datasets)")
    p.add_argument("--tag-column", type=int, default=-1, help="CoNLL: the tag's column (0-based; -1: the last)")
    p.add_argument("--valid-data", help="your own validation file (with --test-data)")
    p.add_argument("--test-data", help="your own test file (with --valid-data)")
    p.add_argument("--valid-fraction", type=float, default=0.1, help="split off the training data when the data "
                   "has no validation split")
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--no-bidirectional", action="store_true")
    p.add_argument("--no-crf", action="store_true", help="tag each word by its own argmax instead of a CRF")
    p.add_argument("--intent-weight", type=float, default=1.0, help="the intent loss's weight (with intents)")
    p.add_argument("--intent-head", choices=["max", "max_mean", "tokens"], default="tokens",
                   help="intents voted by every piece (default), or from max-pooled states, or max and mean pooled")
    p.add_argument("--lowercase", action="store_true", help="lower-case in the tokenizer (case helps NER)")
    train_options(p, cells=("rnn", "jordan", "lstm", "gru"))
    # Tagging data sets are small (ATIS has 4,478 sentences): more regularization and a longer run, stopped early,
    # train a good tagger on any of them without tuning (docs/tagging.md compares these with the shared defaults).
    p.set_defaults(epochs=40, patience=8, dropout=0.5, hidden=160)


def job(a: argparse.Namespace) -> Any:
    """The training job the options describe (checked here, before any work)."""
    from models.tagger import TaggerConfig
    from training.tag import TaggedData, TaggerJob

    data = TaggedData(a.data, a.data_dir, a.tag_column, a.valid_data, a.test_data, a.valid_fraction,
                      a.test_fraction, a.seed)
    model = model_config(TaggerConfig, vocab_size=a.vocab_size, cell=a.cell, emb_dim=a.emb_dim, hidden=a.hidden,
                         layers=a.layers, bidirectional=not a.no_bidirectional, dropout=a.dropout, crf=not a.no_crf,
                         intent_head=a.intent_head)
    return TaggerJob(data=data, out=a.out, model=model, train=train_config(a), max_length=a.max_length,
                     lowercase=a.lowercase, version=a.version, work_dir=a.work_dir, resume=a.resume,
                     intent_weight=a.intent_weight)
