"""`seqserve train lm`: its options, and the job they make (training is imported only when it runs)."""

from __future__ import annotations

import argparse
from typing import Any

from cli.common import model_config, train_config, train_options


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="recipe (multi30k, with --lang), a text file with one sentence or "
                   "paragraph a line (optionally .gz), or a .jsonl/.csv/.tsv file with a --field of texts")
    p.add_argument("--lang", default="en", help="multi30k: the side of the captions to learn (en, de or fr)")
    p.add_argument("--field", default="text", help="JSONL/CSV/TSV: the text field (a header name or a column index)")
    p.add_argument("--data-dir", help="the multi30k recipe's folder (default: $SEQSERVE_MULTI30K_DIR or "
                   "../shared/datasets)")
    p.add_argument("--valid-fraction", type=float, default=0.05, help="split off a file's texts for validation")
    p.add_argument("--test-fraction", type=float, default=0.05)
    p.add_argument("--lowercase", action="store_true", help="lower-case in the tokenizer")
    p.add_argument("--weights-dtype", choices=["float32", "float16"], default="float32",
                   help="how the exported weights are stored: float16 halves the file (computed in float32; "
                   "`seqserve quantize` wants float32)")
    train_options(p)
    # Sentences are short and language models overfit small corpora: a small vocabulary, the embedding tied to the
    # output layer, dropout, and early stopping on validation perplexity (docs/lm.md).
    p.set_defaults(epochs=30, patience=3, vocab_size=4000, emb_dim=128, hidden=384, dropout=0.3, lr=3e-3)


def job(a: argparse.Namespace) -> Any:
    """The training job the options describe (checked here, before any work)."""
    from models.lm import LMConfig
    from training.lm import LMJob, TextData

    data = TextData(a.data, a.lang, a.field, a.data_dir, a.valid_fraction, a.test_fraction, a.seed)
    model = model_config(LMConfig, vocab_size=a.vocab_size, cell=a.cell, emb_dim=a.emb_dim, hidden=a.hidden,
                         layers=a.layers, dropout=a.dropout)
    return LMJob(data=data, out=a.out, model=model, train=train_config(a), max_length=a.max_length,
                 lowercase=a.lowercase, weights_dtype=a.weights_dtype, version=a.version, work_dir=a.work_dir,
                 resume=a.resume)
