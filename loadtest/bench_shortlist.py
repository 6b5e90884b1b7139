"""A translator's lexical shortlist and beam early stopping, side by side in one run (no HTTP):

1. BLEU and chrF on a test split with and without the shortlist, greedy and beam 4, and decoding time;
2. beam 4 under each early-stopping rule: decoder steps per sentence, BLEU, time;
3. decoder-step milliseconds at 1, 8, 32 and 128 rows with and without the shortlist, the rows' sentences'
   candidate union as the service would build it (medians of repeats; beam 4 rows: 4 per sentence, so 128 rows
   are 32 sentences).

    .venv/bin/python loadtest/bench_shortlist.py model_repository/en-de [--out docs/benchmarks]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import machine_info, machine_section, markdown_table  # noqa: E402
from service.engine.decoding import EARLY_STOPPING, BeamSearch  # noqa: E402
from service.engine.repository import read_config, resolve_version_dir  # noqa: E402
from service.engine.sessions import SessionOptions  # noqa: E402
from service.engine.shortlist import CandidateUnion  # noqa: E402
from service.engine.text import BOS_ID, pad_batch  # noqa: E402
from service.engine.translator import DecodeOptions, TranslatorRuntime  # noqa: E402
from training.translate import load_eval_pairs  # noqa: E402

BATCH = 32  # sentences decoded together, as `seqserve evaluate` batches them (sorted by length)


def translate_all(runtime: TranslatorRuntime, sources: list[str], options: DecodeOptions,
                  ) -> tuple[list[str], float, list[Any]]:
    """Hypotheses in input order, seconds, and the searches (for their step counts)."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[str] = [""] * len(sources)
    searches: list[Any] = []
    base = options.factory()

    def make(n: int) -> Any:
        search = base(n)
        searches.append(search)
        return search

    start = time.perf_counter()
    for at in range(0, len(order), BATCH):
        rows = order[at: at + BATCH]
        seqs = runtime.encode([sources[i] for i in rows])
        hyps = runtime.decode_ids(seqs, make, runtime.shortlists(seqs, options))
        for i, seq, hyp in zip(rows, seqs, hyps, strict=True):
            out[i] = runtime.finish(seq, hyp).text
    return out, time.perf_counter() - start, searches


def scores(hyps: list[str], refs: list[str]) -> tuple[float, float]:
    import sacrebleu

    return sacrebleu.corpus_bleu(hyps, [refs]).score, sacrebleu.corpus_chrf(hyps, [refs]).score


def step_ms(runtime: TranslatorRuntime, sources: list[str], rows: int, beam: int, shortlisted: bool,
            repeats: int) -> tuple[float, int]:
    """Median ms of one decoder step over `rows` rows (rows / beam sentences, each `beam` times), and the number
    of candidate ids."""
    sentences = max(1, rows // beam)
    seqs = runtime.encode(sources[:sentences])
    owners = np.repeat(np.arange(sentences), beam)[:rows]
    owners = np.concatenate([owners, np.zeros(rows - len(owners), dtype=np.int64)])
    ids, lengths = pad_batch(seqs)
    encoded = runtime.runner.encode(ids, lengths).select(owners)
    candidates = None
    if shortlisted:
        assert runtime.shortlist is not None and runtime.runner.vocab is not None
        union = CandidateUnion(runtime.runner.vocab)
        for i, seq in enumerate(seqs):
            union.add(i, runtime.shortlist.for_sentence(seq))
        counts = np.bincount(owners, minlength=sentences)
        candidates = (union.ids, union.mask(list(range(sentences)), counts))
    tokens = np.full(rows, BOS_ID, dtype=np.int64)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runtime.runner.step(tokens, encoded.memory, encoded.keys, encoded.src_mask, encoded.states, 2 * beam,
                            candidates)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, len(candidates[0]) if candidates else int(runtime.runner.vocab or 0)


def step_rows(runtime: TranslatorRuntime, sources: list[str], counts: list[int], repeats: int) -> list[list[str]]:
    out = []
    for rows in counts:
        full, _ = step_ms(runtime, sources, rows, 4, False, repeats)
        short, size = step_ms(runtime, sources, rows, 4, True, repeats)
        out.append([str(rows), str(max(1, rows // 4)), f"{full:.3f}", f"{short:.3f}", str(size),
                    f"{full / short:.2f}x"])
        print(out[-1], flush=True)  # noqa: T201
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--split", default="test", help="the recorded data's split (default test: test2016)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=60, help="decoder-step repeats per point")
    parser.add_argument("--out", type=Path, help="write shortlist.md (or, with --steps-only, steps.md) here")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                        help="onnxruntime provider (default cpu; cuda for make bench-gpu)")
    parser.add_argument("--steps-only", action="store_true", help="only the decoder-step table")
    parser.add_argument("--rows", default="1,8,32,128", help="decoder-step row counts (default 1,8,32,128)")
    args = parser.parse_args()
    version = resolve_version_dir(args.model_dir)
    config = read_config(version)
    runtime = TranslatorRuntime(version, config, SessionOptions(device=args.device, intra_op_threads=args.threads))
    if runtime.shortlist is None:
        raise SystemExit(f"{version} has no shortlist; run `seqserve shortlist {version}` first")
    if args.steps_only:
        sources = [p.src for p in load_eval_pairs(config, argparse.Namespace(data=None, split=args.split, pair=None))]
        table = markdown_table(["rows", "sentences", "ms full", "ms shortlist", "candidate ids", "speed-up"],
                               step_rows(runtime, sources, [int(r) for r in args.rows.split(",")], args.repeats))
        text = (f"# Decoder step on {runtime.provider}\n\n`{version}`, beam 4 rows (4 per sentence), median of "
                f"{args.repeats}.\n\n{table}\n{machine_section(machine_info())}")
        sys.stdout.write(text)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "steps.md").write_text(text, encoding="utf-8")
        return
    pairs = load_eval_pairs(config, argparse.Namespace(data=None, split=args.split, pair=None))
    sources, refs = [p.src for p in pairs], [p.tgt for p in pairs]
    entry = config["shortlist"]

    quality = []
    for beam in (1, 4):
        row: dict[str, Any] = {}
        for shortlisted in (False, True):
            hyps, seconds, _ = translate_all(runtime, sources, DecodeOptions(beam_size=beam, shortlist=shortlisted))
            row[shortlisted] = (*scores(hyps, refs), seconds, hyps)
        same = sum(a == b for a, b in zip(row[False][3], row[True][3], strict=True))
        quality.append([("greedy" if beam == 1 else f"beam {beam}"), f"{row[False][0]:.2f}", f"{row[True][0]:.2f}",
                        f"{row[True][0] - row[False][0]:+.2f}", f"{row[False][1]:.2f}", f"{row[True][1]:.2f}",
                        f"{100 * same / len(sources):.1f} %", f"{row[False][2]:.1f}", f"{row[True][2]:.1f}",
                        f"{row[False][2] / row[True][2]:.2f}x"])
        print(quality[-1], flush=True)  # noqa: T201

    stopping = []
    # long inputs too: three consecutive test sentences as one sequence (as a text decoded without splitting)
    joined = [(" ".join(sources[i:i + 3]), " ".join(refs[i:i + 3])) for i in range(0, len(sources) - 2, 3)]
    inputs = [("sentences", sources, refs), ("3 sentences joined", [j[0] for j in joined], [j[1] for j in joined])]
    for name, texts, references in inputs:
        baseline: list[str] = []
        for rule in EARLY_STOPPING:
            hyps, seconds, searches = translate_all(runtime, texts, DecodeOptions(beam_size=4, early_stopping=rule,
                                                                                  shortlist=False))
            baseline = baseline or hyps
            steps = [s.steps for s in searches if isinstance(s, BeamSearch)]
            bleu, chrf = scores(hyps, references)
            same = sum(a == b for a, b in zip(hyps, baseline, strict=True))
            stopping.append([name, rule, f"{np.mean(steps):.2f}", f"{bleu:.2f}", f"{chrf:.2f}",
                             f"{100 * same / len(texts):.1f} %", f"{seconds:.1f}"])
            print(stopping[-1], flush=True)  # noqa: T201

    steps_rows = step_rows(runtime, sources, [int(r) for r in args.rows.split(",")], args.repeats)
    valid = entry.get("valid", {})
    text = "\n".join([
        "# Lexical shortlist and beam early stopping", "",
        f"Model: `{version}` ({runtime.provider}, {args.threads} intra-op thread(s)); {len(sources)} sentences of the "
        f"recorded data's {args.split} split, decoded {BATCH} at a time sorted by length. Shortlist: "
        f"{entry['method']}, {entry['per_source']} targets per source token (p >= {entry['min_prob']}), the "
        f"{entry['frequent']} most frequent targets, source tokens copied: {entry['copy_source']}; on validation it "
        f"holds {100 * valid.get('token_coverage', float('nan')):.1f} % of the reference tokens, "
        f"{valid.get('mean_size', float('nan')):.0f} ids a sentence on average.", "",
        "## Quality and decoding time, with and without the shortlist", "",
        markdown_table(["search", "BLEU full", "BLEU shortlist", "change", "chrF full", "chrF shortlist",
                        "same output", "s full", "s shortlist", "speed-up"], quality),
        "## Beam 4: early-stopping rules (full vocabulary)", "",
        "bound (the default) stops once no live hypothesis can beat the best finished one under the length "
        "penalty's bound: the answers of searching to the length limit. length is the rule before (the best live "
        "hypothesis scored at its current length, once beam_size have finished); beam stops once beam_size "
        "have finished.", "",
        markdown_table(["inputs", "rule", "decoder steps / input", "BLEU", "chrF", "same output as bound",
                        "seconds"], stopping),
        "## One decoder step (beam 4 rows: 4 per sentence)", "",
        markdown_table(["rows", "sentences", "ms full", "ms shortlist", "candidate ids", "speed-up"], steps_rows),
        machine_section(machine_info())])
    sys.stdout.write(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "shortlist.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
