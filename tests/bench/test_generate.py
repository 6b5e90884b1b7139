"""`bench generate` (short/long sampling per scheduler mode) and `bench complete` (service against bare engine): the
prompts, the answer checks, the target ratios, and both commands end to end on the tiny LM (counts, not speed)."""

from __future__ import annotations

import json
import math

from bench.core import Call, Point
from bench.generate import (
    answer_check,
    caption_prompts,
    check_completion,
    closest,
    completion_prefixes,
    generate_calls,
    ratio_table,
    results_table,
    tokens_per_s,
)
from cli.main import main

CAPTIONS = ["A man in an orange hat starring at something .", "Two dogs play in the snow .", "A girl runs ."]
LENGTHS = {"short": 8, "long": 64}


def test_prompts_are_the_first_words_of_captions_and_prefixes_end_at_or_inside_a_word():
    prompts = caption_prompts(CAPTIONS * 20, seed=1)
    assert prompts == caption_prompts(CAPTIONS * 20, seed=1) and len(prompts) == 60
    assert all(2 <= len(p.split()) <= 4 and c.startswith(p) for p, c in zip(prompts, CAPTIONS * 20, strict=True))
    prefixes = completion_prefixes(CAPTIONS * 20, seed=1, count=50)
    assert len(prefixes) == 50 and all(any(f"{c} ".startswith(p) for c in CAPTIONS) for p in prefixes)
    ends = {p.endswith(" ") for p in prefixes}
    assert ends == {True, False}  # some ask for the next word, some to complete the one begun


def test_generate_calls_repeat_and_the_check_wants_exactly_max_tokens():
    short, long = generate_calls(["A man", "Two dogs"], LENGTHS, "animals", 0.8, seed=3)
    bodies = [json.loads(c.body) for c in short + long]
    assert [c.kind for c in short + long] == ["short", "short", "long", "long"]
    assert [b["max_tokens"] for b in bodies] == [8, 8, 64, 64] and all(b["ignore_eos"] for b in bodies)
    assert bodies[0] == {"model": "animals", "texts": ["A man"], "max_tokens": 8, "temperature": 0.8,
                         "seed": bodies[0]["seed"], "ignore_eos": True}
    assert len({b["seed"] for b in bodies}) == 4  # a seed of its own per request
    assert [c.body for c in generate_calls(["A man", "Two dogs"], LENGTHS, "animals", 0.8, seed=3)[0]] == [
        c.body for c in short]
    check = answer_check(LENGTHS)
    assert check(short[0], {"results": [{"token_ids": list(range(8))}]}) is None
    assert "expected 64 token ids" in str(check(long[0], {"results": [{"token_ids": list(range(8))}]}))
    assert "expected 1 result(s)" in str(check(short[0], {"results": []}))


def test_the_report_derives_tokens_per_s_and_sets_the_target_ratios_beside_the_measured_ones():
    points = []
    for mode, short_rps, long_rps, p50 in (("continuous", 70.0, 30.0, 10.0), ("static", 60.0, 30.0, 40.0),
                                           ("none", 20.0, 10.0, 50.0)):
        points += [Point(mode, "all", 32, short_rps + long_rps, p50, p50 * 2, 0, 100, 3),
                   Point(mode, "short", 32, short_rps, p50, p50 * 2, 0, 70, 3),
                   Point(mode, "long", 32, long_rps, p50 * 4, p50 * 8, 0, 30, 3)]
    assert tokens_per_s(points, "continuous", 32, LENGTHS) == 70 * 8 + 30 * 64
    assert math.isnan(tokens_per_s(points, "continuous", 8, LENGTHS))
    ratios = ratio_table(points, 32, LENGTHS)
    assert "| generated tokens/s, continuous / none | 3.10x | >= 3x |" in ratios  # 2480 / 800 tokens/s
    assert "| generated tokens/s, continuous / static | 1.03x | >= 0.95x |" in ratios
    assert "| short requests' p50 latency, continuous / static | 0.25x | <= 0.5x |" in ratios
    assert ratio_table(points, 8, LENGTHS).count("n/a") == 3
    row = "| continuous | 32 | 2,480.0 | 100.00 | 10.0 | 20.0 | 40.0 | 80.0 | 0/100 |"
    assert row in results_table(points, LENGTHS)
    assert closest([1, 8, 16, 64], 32) == 16 and closest([1, 8, 32, 64], 32) == 32 and closest([4], 32) == 4


def test_the_completion_check_wants_words_most_likely_first():
    call = Call("all", b"{}", 1)
    good = {"results": [{"partial": "ca", "suggestions": [{"word": "cat", "probability": 0.6},
                                                          {"word": "camel", "probability": 0.1}]}]}
    assert check_completion(call, good) is None
    assert check_completion(call, {"results": [{"partial": "", "suggestions": []}]}) is None
    unordered = {"results": [{"partial": "", "suggestions": good["results"][0]["suggestions"][::-1]}]}
    assert "most likely first" in str(check_completion(call, unordered))
    assert "malformed" in str(check_completion(call, {"results": [{"partial": ""}]}))
    assert "expected 1 result(s)" in str(check_completion(call, {"results": []}))


def test_bench_generate_starts_a_service_per_mode_and_reports_tokens_and_ratios(repo, tmp_path, capsys):
    texts = tmp_path / "prompts.txt"
    texts.write_text("the elephant\na cat jumps\nthe giraffe watches the\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(["bench", "generate", "--repo", str(repo), "--model", "animals", "--levels", "1,2", "--repeats", "1",
                 "--seconds", "0.5", "--warmup", "0.1", "--short-tokens", "4", "--long-tokens", "16",
                 "--long-fraction", "0.5", "--texts-file", str(texts), "--load-fractions", "0.5", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    figures = json.loads((out / "generate.json").read_text())
    closed = figures["closed_loop"]
    assert {(p["series"], p["kind"], p["level"]) for p in closed} == {
        (mode, kind, level) for mode in ("continuous", "static", "none") for kind in ("all", "short", "long")
        for level in (1, 2)}
    assert all(p["errors"] == 0 and p["requests"] > 0 for p in closed + figures["open_loop"])
    tokens = figures["generated_tokens"]
    assert {(t["series"], t["level"]) for t in tokens} == {(m, lv) for m in ("continuous", "static", "none")
                                                          for lv in (1, 2)}
    assert all(t["tokens_per_s"] > 0 and t["requests_per_s"] > 0 for t in tokens)
    ratios = figures["ratios"]
    assert ratios["level"] == 2 and [r["target"] for r in ratios["targets"]] == [">= 3x", ">= 0.95x", "<= 0.5x"]
    assert all(r["measured"] > 0 for r in ratios["targets"])
    report = (out / "generate.md").read_text()
    assert report.startswith("# Generation benchmark") and "closest to 32" in report
    assert "| generated tokens/s, continuous / none |" in report and "## Machine" in report
    assert (out / "generate.png").stat().st_size > 0 and (out / "generate-load.png").stat().st_size > 0
    assert main(["bench", "generate", "--repo", str(repo), "--model", "animals", "--long-tokens", "0"]) == 2
    assert "--long-tokens must be >= 1" in capsys.readouterr().err


def test_bench_complete_compares_the_service_with_the_bare_engine(repo, tmp_path, capsys):
    texts = tmp_path / "prefixes.txt"
    texts.write_text("the eleph\na cat jumps ov\nthe giraffe watches the\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(["bench", "complete", "--repo", str(repo), "--model", "animals", "--levels", "1,2", "--repeats", "1",
                 "--seconds", "0.3", "--warmup", "0.1", "--texts-file", str(texts), "--load-fractions", "",
                 "--generator", "aiohttp", "--no-int8", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    points = json.loads((out / "complete.json").read_text())["closed_loop"]
    assert {(p["series"], p["level"]) for p in points} == {(s, lv) for s in ("service fp32", "bare fp32")
                                                          for lv in (1, 2)}
    assert all(p["requests"] > 0 and p["errors"] == 0 and p["throughput"] > 0 for p in points)
    report = (out / "complete.md").read_text()
    assert report.startswith("# Completion benchmark") and "`LMRuntime.complete`" in report
    rows = [line for line in report.split("## Ratios")[1].splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(rows) == 2 and all(line.split(" | ")[1].endswith("x") for line in rows)  # service/bare fp32
