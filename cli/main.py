"""The `seqserve` console script. Training commands import torch when they run, so serving never needs it."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cli.common import EXIT_USER_ERROR, Parser, check_version, version_options
from cli.kinds import TRAIN
from service.errors import UserError


def _add_train(sub: Any) -> None:
    train = sub.add_parser("train", help="train a model and write it into a model repository")
    kinds = train.add_subparsers(dest="kind", required=True, parser_class=Parser)
    for kind, command in TRAIN.items():
        p = kinds.add_parser(kind, help=command.help)
        command.add_options(p)
        p.set_defaults(func=_cmd_train)


def _cmd_train(a: argparse.Namespace) -> None:
    job = TRAIN[a.kind].job(a)
    check_version(a.out, a.version, a.overwrite)
    from training.job import run_job

    path = run_job(job)
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
    p.add_argument("--tag-column", type=int, help="taggers: a CoNLL file's tag column (default: as trained, or last)")
    p.add_argument("--no-shortlist", dest="shortlist", action="store_false", default=None,
                   help="translators: decode over the whole vocabulary even when the model has a lexical shortlist")
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
    version_options(p)
    p.set_defaults(func=_cmd_export)


def _cmd_export(a: argparse.Namespace) -> None:
    from training.export import export_run
    from training.repo_writer import VersionWriter

    check_version(a.out, a.version, a.overwrite)
    path = export_run(a.run_dir, a.out, a.version)
    VersionWriter(path).write_card()
    logging.getLogger("seqserve").info("wrote %s", path)


def _add_quantize(sub: Any) -> None:
    p = sub.add_parser("quantize", help="write an int8 variant (int8 weights, calibrated activation scales: the same "
                                        "answers alone or batched) as a new version")
    p.add_argument("model_dir", type=Path, help="model_repository/NAME[/VERSION] (latest version if omitted)")
    version_options(p)
    p.add_argument("--out", type=Path, help="model folder to write into (default: the source's own)")
    p.add_argument("--calibration-data", type=Path, metavar="FILE",
                   help="texts to calibrate activation scales on, one per line (default: the training split the "
                        "model records)")
    p.add_argument("--calibration-size", type=int, metavar="N",
                   help="how many of them, drawn at random (default 512)")
    p.add_argument("--recurrent-weights", choices=["float32", "float16", "int8"], default="float32",
                   help="how the LSTM/GRU weights, which are computed in float, are stored: float16 halves them, int8 "
                        "(weight-only, a scale per row) quarters them")
    p.add_argument("--shared-weights", action="store_true",
                   help="store the graphs' weights in one file beside them, each distinct tensor once (a translator's "
                        "shared embeddings are stored once)")
    p.set_defaults(func=_cmd_quantize)


def _cmd_quantize(a: argparse.Namespace) -> None:
    from service.engine.repository import resolve_version_dir
    from training.quantize import quantize_version

    source = resolve_version_dir(a.model_dir)
    out = a.out or source.parent
    if a.version is None or (out / str(a.version)).resolve() != source.resolve():  # onto itself: quantize refuses
        check_version(out, a.version, a.overwrite)
    path = quantize_version(a.model_dir, a.version, a.out, a.calibration_data, a.calibration_size,
                            a.recurrent_weights, a.shared_weights)
    logging.getLogger("seqserve").info("wrote %s", path)


def _add_shortlist(sub: Any) -> None:
    p = sub.add_parser("shortlist", help="learn a translator version's lexical shortlist (faster CPU decoding) from "
                                         "its training pairs and add it, with its step graph, to the version")
    p.add_argument("model_dir", type=Path, help="model_repository/NAME[/VERSION] (latest version if omitted)")
    p.add_argument("--data", help="training pairs to learn from (default: the data the model records)")
    p.add_argument("--target-data", help="target-side file aligned with --data")
    p.add_argument("--per-source", type=int, default=20, metavar="K",
                   help="the K most likely target tokens kept per source token (default 20)")
    p.add_argument("--frequent", type=int, default=100, metavar="N",
                   help="the N most frequent target tokens every sentence gets (default 100)")
    p.add_argument("--min-prob", type=float, default=0.01, metavar="P",
                   help="drop translation candidates less likely than P (default 0.01)")
    p.set_defaults(func=_cmd_shortlist)


def _cmd_shortlist(a: argparse.Namespace) -> None:
    from training.shortlist import shortlist_version

    shortlist_version(a.model_dir, a.data, a.target_data, a.per_source, a.frequent, a.min_prob)


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
    from service.metrics import Metrics
    from service.serving.manager import ModelManager

    ModelManager(settings, Metrics()).names()  # a missing repository or unknown model fails here, with exit 2
    serve(settings)


def _add_bench(sub: Any) -> None:
    from bench.options import add_bench_commands  # stdlib only; the workloads import when they run

    add_bench_commands(sub)


COMMANDS: list[Callable[[Any], None]] = [_add_train, _add_evaluate, _add_export, _add_quantize, _add_shortlist,
                                         _add_serve, _add_bench]


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
