"""Language models: `bench generate` samples short and long continuations against one service per scheduler mode
(the machinery of `bench.modes`, shared with translate), generated tokens/s and latency per concurrency, short and
long requests apart; `bench complete` measures next-word suggestions, the service against the bare engine (the
machinery of `bench.onetext`, shared with classify and tag)."""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.core import Call, Check, Point, read_texts
from bench.modes import (
    KINDS,
    MULTI30K_TEST,
    MixedCalls,
    by_kind,
    measure,
    multi30k_english,
    parse_modes,
    stat,
    write_outputs,
)
from bench.onetext import Workload
from bench.onetext import run as run_workload
from bench.report import Series, fmt, machine_info, machine_section, markdown_table, open_loop_section, ratio
from service.engine.lm import LMRuntime
from service.errors import UserError

PROMPT_WORDS = (2, 4)
MULTI30K_SOURCE = "Multi30k English test2016 captions"


def caption_start(sentence: str, rng: random.Random) -> tuple[str, str]:
    """The first 2-4 words of a caption, and the word after them ("" at its end)."""
    words = sentence.split()
    n = rng.randint(*PROMPT_WORDS)
    return " ".join(words[:n]), " ".join(words[n: n + 1])


def caption_prompts(sentences: Sequence[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    return [caption_start(s, rng)[0] for s in sentences]


def completion_prefixes(sentences: Sequence[str], seed: int, count: int) -> list[str]:
    """Captions as typed: 2-4 words and a space (the next word is suggested) or, half the time, the first letters
    of the next word too (that word is completed)."""
    rng = random.Random(seed)
    prefixes = []
    for sentence in rng.sample(list(sentences), min(count, len(sentences))):
        start, following = caption_start(sentence, rng)
        typed = following[: rng.randint(1, len(following) - 1)] if len(following) > 1 and rng.random() < 0.5 else ""
        prefixes.append(f"{start} {typed}")
    return prefixes


def generate_calls(prompts: Sequence[str], lengths: Mapping[str, int], model: str, temperature: float,
                   seed: int) -> tuple[list[Call], list[Call]]:
    """Each prompt as a short and as a long request, each with a seed of its own drawn from `seed`."""
    rng = random.Random(seed)

    def calls(kind: str) -> list[Call]:
        return [Call(kind, json.dumps({"model": model, "texts": [p], "max_tokens": lengths[kind],
                                       "temperature": temperature, "seed": rng.randrange(2**31),
                                       "ignore_eos": True}).encode(), 1) for p in prompts]

    return calls("short"), calls("long")


def results_of(call: Call, body: Any) -> tuple[list[Any], str | None]:
    """An answer's results, or none and what is wrong when there is not one per text sent."""
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or len(results) != call.texts:
        return [], f"expected {call.texts} result(s), got {str(body)[:200]}"
    return results, None


def answer_check(lengths: Mapping[str, int]) -> Check:
    """One result per request, with exactly its kind's max_tokens token ids (ignore_eos)."""
    def check(call: Call, body: Any) -> str | None:
        results, wrong = results_of(call, body)
        if wrong:
            return wrong
        ids = [r.get("token_ids") if isinstance(r, dict) else None for r in results]
        if not all(isinstance(i, list) and len(i) == lengths[call.kind] for i in ids):
            return f"expected {lengths[call.kind]} token ids per result (ignore_eos), got {str(body)[:200]}"
        return None

    return check


def tokens_per_s(points: Sequence[Point], series: str, level: int, lengths: Mapping[str, int]) -> float:
    """Each kind's answered requests/s times its max_tokens, summed (NaN when the level was not measured)."""
    return sum(stat(points, series, level, kind, "throughput") * lengths[kind] for kind in KINDS)


def closest(levels: Sequence[int], target: int) -> int:
    return min(levels, key=lambda level: (abs(level - target), level))


def quotient(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and not math.isnan(numerator + denominator) else math.nan


def target_ratios(points: Sequence[Point], level: int, lengths: Mapping[str, int]) -> list[tuple[str, float, str]]:
    """The issue's targets: (what, the measured ratio at `level`, the target)."""
    def tokens(mode: str) -> float:
        return tokens_per_s(points, mode, level, lengths)

    def short_p50(mode: str) -> float:
        return stat(points, mode, level, "short", "p50_ms")

    return [("generated tokens/s, continuous / none", quotient(tokens("continuous"), tokens("none")), ">= 3x"),
            ("generated tokens/s, continuous / static", quotient(tokens("continuous"), tokens("static")), ">= 0.95x"),
            ("short requests' p50 latency, continuous / static",
             quotient(short_p50("continuous"), short_p50("static")), "<= 0.5x")]


def ratio_table(points: Sequence[Point], level: int, lengths: Mapping[str, int]) -> str:
    rows = [[what, ratio(measured, 1.0), target] for what, measured, target in target_ratios(points, level, lengths)]
    return markdown_table([f"at concurrency {level}", "measured", "target"], rows)


def results_table(points: Sequence[Point], lengths: Mapping[str, int]) -> str:
    rows = [[p.series, str(p.level), fmt(tokens_per_s(points, p.series, p.level, lengths)), fmt(p.throughput, 2),
             fmt(s.p50_ms), fmt(s.p99_ms), fmt(lg.p50_ms), fmt(lg.p99_ms), f"{p.errors}/{p.requests}"]
            for p, s, lg in by_kind(points)]
    return markdown_table(["mode", "concurrency", "generated tokens/s", "requests/s", "short p50 ms", "short p99 ms",
                           "long p50 ms", "long p99 ms", "errors/requests"], rows)


def figures(points: Sequence[Point], level: int, lengths: Mapping[str, int]) -> dict[str, object]:
    """What the JSON adds to the points: generated tokens/s per mode and level, and the target ratios."""
    def number(x: float) -> float | None:
        return None if math.isnan(x) else x

    tokens = [{"series": p.series, "level": p.level, "tokens_per_s": tokens_per_s(points, p.series, p.level, lengths),
               "requests_per_s": p.throughput} for p in points if p.kind == "all"]
    targets = [{"ratio": what, "measured": number(measured), "target": target}
               for what, measured, target in target_ratios(points, level, lengths)]
    return {"generated_tokens": tokens, "ratios": {"level": level, "targets": targets}}


def report(series: Series, a: argparse.Namespace, source: str, prompts: int, lengths: Mapping[str, int],
           info: dict[str, str]) -> str:
    points, level = series.closed, closest(a.levels, a.ratio_level)
    where = "" if level == a.ratio_level else f" (of the levels run, the closest to {a.ratio_level})"
    return "\n".join([
        "# Generation benchmark", "",
        f"Prompts: {source}, {prompts} of them. Each request is one prompt, sampled at temperature "
        f"{a.temperature:g} with a seed of its own (drawn from --seed {a.seed}, so runs repeat) and `ignore_eos`, "
        f"so that it generates exactly its max_tokens: {lengths['long']} (long) with probability "
        f"{a.long_fraction:g}, else {lengths['short']} (short). Each level: {a.repeats} windows of {a.seconds:g} s "
        f"after {a.warmup:g} s warm-up; medians. One `seqserve serve` per scheduler mode (SEQSERVE_SCHEDULER), "
        "default settings otherwise. Generated tokens/s: each kind's answered requests/s times its max_tokens "
        "(every answer is checked to carry exactly that many tokens), summed. The load generator (aiohttp, closed "
        "loop) shares the cores with the service.", "",
        results_table(points, lengths), "## Scheduler modes compared", "",
        f"The measured ratios at concurrency {level}{where}, beside the targets.", "",
        ratio_table(points, level, lengths), "![throughput and latency](generate.png)" if a.out else "", "",
        open_loop_section(series.opened, a, "generate-load.png" if a.out else None), machine_section(info)])


def run(a: argparse.Namespace) -> None:
    a.modes = parse_modes(a.modes)
    if min(a.short_tokens, a.long_tokens) < 1 or not 0 <= a.long_fraction <= 1 or not 0 <= a.temperature <= 5:
        raise UserError("--short-tokens and --long-tokens must be >= 1, --long-fraction within 0..1 and "
                        "--temperature within 0..5")
    if a.texts_file:
        prompts, source = read_texts(a.texts_file), f"the lines of {a.texts_file}"
    else:
        prompts = caption_prompts(multi30k_english(names=MULTI30K_TEST), a.seed)
        source = f"the first {PROMPT_WORDS[0]}-{PROMPT_WORDS[1]} words of {MULTI30K_SOURCE}"
    lengths = {"short": a.short_tokens, "long": a.long_tokens}
    short, long = generate_calls(prompts, lengths, a.model, a.temperature, a.seed)
    info = machine_info()
    log_dir = Path(tempfile.mkdtemp(prefix="seqserve-bench-generate-"))
    sys.stderr.write(f"bench generate: {len(prompts)} prompts; service logs in {log_dir}\n")
    series = measure(a, "/v1/generate", lambda: MixedCalls(short, long, a.long_fraction, a.seed),
                     answer_check(lengths), log_dir)
    text = report(series, a, source, len(prompts), lengths, info)
    sys.stdout.write(text)
    title = f"generation ({a.model}), {lengths['short']} or {lengths['long']} tokens; throughput in requests/s"
    write_outputs(a, "generate", text, figures(series.closed, closest(a.levels, a.ratio_level), lengths), series,
                  title)


def check_completion(call: Call, body: Any) -> str | None:
    """One result per text, each with at most 5 suggestions (k), words with probabilities, most likely first."""
    results, wrong = results_of(call, body)
    if wrong:
        return wrong
    for result in results:
        try:
            words = [(s["word"], float(s["probability"])) for s in result["suggestions"]]
        except (KeyError, TypeError, ValueError) as exc:
            return f"a malformed completion ({type(exc).__name__}: {exc}): {str(result)[:200]}"
        probabilities = [p for _, p in words]
        if (len(words) > 5 or probabilities != sorted(probabilities, reverse=True)
                or not all(isinstance(w, str) and 0 <= p <= 1 + 1e-6 for w, p in words)):
            return f"expected at most 5 words, most likely first, with probabilities: {str(result)[:200]}"
    return None


def _complete_engine(version_dir: Path, config: dict[str, Any]) -> Callable[[list[str]], object]:
    return LMRuntime(version_dir, config).complete  # k = 5, the API's default


def _complete_texts(a: argparse.Namespace, model_dir: Path | None) -> tuple[list[str], str]:
    if a.texts_file is not None:
        return read_texts(a.texts_file), str(a.texts_file)
    prefixes = completion_prefixes(multi30k_english(names=MULTI30K_TEST), a.seed, a.texts)
    return prefixes, (f"{len(prefixes)} prefixes (seed {a.seed}) of {MULTI30K_SOURCE}, "
                      "ending with a space or inside a word")


COMPLETE = Workload(
    name="complete", path="/v1/complete", title="Completion benchmark", noun="next-word completion",
    bare="`LMRuntime.complete` (k = 5: tokenize, the prompt graph, then a best-first search over pieces for the "
    "next words, the batch's prefixes stepping together)", check=check_completion, engine=_complete_engine,
    texts=_complete_texts, batching="the iteration-level scheduler")


def run_complete(a: argparse.Namespace) -> None:
    run_workload(COMPLETE, a)
