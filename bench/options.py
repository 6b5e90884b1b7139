"""`seqserve bench classify|tag|translate|generate|complete` arguments (stdlib only: the workloads import lazily
when they run)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from service.errors import UserError


def levels(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; each a positive integer."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def fractions(text: str) -> list[float]:
    """'0.5,1.1' -> [0.5, 1.1]; each positive. An empty string: none."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _common(p: argparse.ArgumentParser, model: str, default_levels: str) -> None:
    target = p.add_argument_group("what to measure (--url, --repo or both)")
    target.add_argument("--url", help="a running service, e.g. http://127.0.0.1:8000")
    target.add_argument("--repo", type=Path, help="model repository to start services from (and, for "
                        "classify, tag and complete, to run the bare engine on)")
    target.add_argument("--model", default=model, help=f"model name (default {model})")
    load = p.add_argument_group("load")
    load.add_argument("--levels", type=levels, default=levels(default_levels), metavar="N,N,...",
                      help=f"concurrency levels (default {default_levels})")
    load.add_argument("--load-fractions", type=fractions, default=fractions("0.25,0.5,0.75,0.9,1.1"),
                      metavar="F,F,...", help="open loop after each closed-loop series: Poisson arrivals at these "
                      "fractions of the throughput it reached (default 0.25,0.5,0.75,0.9,1.1; '' for none)")
    load.add_argument("--repeats", type=int, default=3, help="windows per level; medians are reported")
    load.add_argument("--seconds", type=float, default=10.0, help="length of one measured window")
    load.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each window")
    load.add_argument("--texts-file", type=Path, help="UTF-8 file, one text per line, instead of the data set")
    load.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="folder for the markdown report, JSON figures and PNG plots")


def _one_text_per_request(p: argparse.ArgumentParser, model: str, texts_help: str,
                          default_levels: str = "1,8,32,128") -> None:
    """classify, tag and complete: one text per request, the service against the bare engine, fp32 against int8."""
    _common(p, model, default_levels)
    p.add_argument("--texts", type=int, default=512, help=texts_help)
    p.add_argument("--no-bare", action="store_true", help="skip the bare onnxruntime series")
    p.add_argument("--generator", choices=["auto", "wrk", "aiohttp"], default="auto",
                   help="closed-loop load generator: wrk (C, far cheaper on shared cores) or aiohttp (checks every "
                   "answer; wrk runs whole seconds, at least 1, for --seconds and --warmup); auto: wrk when "
                   "installed (default)")
    p.add_argument("--no-int8", action="store_true", help="do not quantize an int8 variant when the repository "
                   "has none (quantizing needs the train extra)")


def _mixed(p: argparse.ArgumentParser, model: str, long_help: str, ratio_help: str) -> None:
    """translate and generate: a mix of short and long requests, one service per scheduler mode."""
    _common(p, model, "1,8,32,64")
    p.add_argument("--modes", default="continuous,static,none",
                   help="scheduler modes to start a service for (with --repo)")
    p.add_argument("--long-fraction", type=float, default=0.3, help=long_help)
    p.add_argument("--ratio-level", type=int, default=32, help=ratio_help)


def add_bench_commands(sub: Any) -> None:
    bench = sub.add_parser("bench", help="closed- and open-loop benchmarks of the service (prints ratios, medians)")
    workloads = bench.add_subparsers(dest="workload", required=True, parser_class=type(bench))
    clf = workloads.add_parser("classify", help="texts/s and latency: service vs bare onnxruntime, fp32 vs int8")
    _one_text_per_request(clf, "sentiment", "Rotten Tomatoes snippets to cycle through")
    clf.set_defaults(func=_run_classify)
    tag = workloads.add_parser("tag", help="tagged texts/s and latency: service vs bare onnxruntime, fp32 vs int8")
    _one_text_per_request(tag, "atis", "utterances of the model's test split (with --url alone: ATIS's) to cycle "
                          "through")
    tag.set_defaults(func=_run_tag)
    tr = workloads.add_parser("translate", help="mixed short/long translations per scheduler mode")
    _mixed(tr, "en-de", "share of long (25-40 word) requests", "concurrency at which modes are compared")
    tr.add_argument("--beam-size", type=int, default=4, help="1 for greedy (default 4, the API default)")
    tr.add_argument("--engine", action="store_true", help="also drive the bare decoding engine (the served model's "
                    "continuous scheduler in this process, no HTTP) at --ratio-level, and set the service against it")
    tr.set_defaults(func=_run_translate)
    gen = workloads.add_parser("generate", help="generated tokens/s and latency of mixed short/long sampled "
                               "continuations per scheduler mode")
    _mixed(gen, "captions-lm", "share of long requests", "concurrency at which modes are compared (of the levels "
           "run, the closest)")
    gen.add_argument("--short-tokens", type=int, default=8, help="tokens a short request generates (default 8)")
    gen.add_argument("--long-tokens", type=int, default=64, help="tokens a long request generates (default 64)")
    gen.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    gen.set_defaults(func=_run_generate)
    cmp = workloads.add_parser("complete", help="next-word completions/s and latency: service (its default, "
                               "continuous scheduler) vs bare LMRuntime.complete, k = 5")
    _one_text_per_request(cmp, "captions-lm", "prefixes of Multi30k English test2016 captions to cycle through",
                          "1,8,32")
    cmp.set_defaults(func=_run_complete)


def check_common(a: argparse.Namespace) -> None:
    if not a.url and not a.repo:
        raise UserError("give --url (a running service), --repo (a model repository) or both")
    if a.repeats < 1 or a.seconds <= 0 or a.warmup < 0:
        raise UserError("--repeats must be >= 1, --seconds > 0 and --warmup >= 0")
    if a.repo is not None and not (a.repo / a.model).is_dir():
        raise UserError(f"{a.repo / a.model}: no such model folder")
    if a.texts_file is not None and not a.texts_file.is_file():
        raise UserError(f"{a.texts_file}: no such file")


def _need_aiohttp() -> None:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise UserError("seqserve bench needs aiohttp (it is in the dev extra): pip install aiohttp") from None


def _ready(a: argparse.Namespace) -> None:
    check_common(a)
    _need_aiohttp()


def _run_classify(a: argparse.Namespace) -> None:
    _ready(a)
    from bench.classify import run

    run(a)


def _run_tag(a: argparse.Namespace) -> None:
    _ready(a)
    from bench.tag import run

    run(a)


def _run_translate(a: argparse.Namespace) -> None:
    _ready(a)
    from bench.translate import run

    run(a)


def _run_generate(a: argparse.Namespace) -> None:
    _ready(a)
    from bench.generate import run

    run(a)


def _run_complete(a: argparse.Namespace) -> None:
    _ready(a)
    from bench.generate import run_complete

    run_complete(a)
