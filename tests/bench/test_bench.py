"""The benchmark core: statistics, tables, the closed-loop generator against a real server (counts, not speed)."""

from __future__ import annotations

import json
import math
import random
import shutil

import httpx
import numpy as np
import pytest

from bench.classify import check_answer as check_classify
from bench.classify import classify_calls, classify_source, find_variants
from bench.core import (
    Call,
    Point,
    Window,
    arrivals,
    batches,
    checked,
    function_loop,
    open_loop,
    percentile,
    run_closed_loop,
    run_open_loop,
    summarize,
)
from bench.report import markdown_table, points_table, ratio
from bench.server import free_port
from bench.tag import check_answer as check_tag
from bench.translate import MixedSource, ratio_table, results_table, short_and_long
from bench.wrk import spot_check, wrk_closed_loop
from cli.main import main
from service.errors import UserError
from tests.service.api.test_api import metric


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear_interpolation(q):
    values = [random.Random(q).uniform(0, 10) for _ in range(37)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([4.0], q) == 4.0


def test_percentile_refuses_nothing_and_out_of_range():
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)


def window(level: int, seconds: float, latencies: list[float], errors: int = 0, kind: str = "all") -> Window:
    w = Window(level, seconds, {})
    for x in latencies:
        w.record(kind, 1, x, None)
    for _ in range(errors):
        w.record(kind, 1, 9.9, "HTTP 503: full")
    return w


def test_summarize_takes_the_median_of_each_statistic_over_repeats():
    windows = [window(8, 2.0, [0.010] * 10), window(8, 2.0, [0.020] * 30, errors=2), window(8, 2.0, [0.040] * 20)]
    point = summarize("service fp32", windows)
    assert (point.series, point.kind, point.level, point.repeats) == ("service fp32", "all", 8, 3)
    assert point.throughput == 10.0  # texts/s per window: 5, 15, 10
    assert point.p50_ms == pytest.approx(20.0)
    assert (point.errors, point.requests, point.first_error) == (2, 62, "HTTP 503: full")


def test_summarize_by_kind_and_with_no_successes():
    w = window(4, 1.0, [0.1, 0.3], kind="short")
    w.record("long", 1, 2.0, None)
    assert summarize("m", [w], "short").throughput == 2.0
    assert summarize("m", [w], "long").p99_ms == pytest.approx(2000.0)
    assert summarize("m", [w]).requests == 3
    empty = summarize("m", [window(4, 1.0, [], errors=3)])
    assert math.isnan(empty.p50_ms) and empty.throughput == 0.0
    with pytest.raises(UserError, match="every request failed at level 4; first: HTTP 503"):
        checked(empty)


def test_ratios_and_tables_are_formatted_for_markdown():
    assert ratio(3.0, 2.0) == "1.50x"
    assert ratio(1.0, 0.0) == ratio(math.nan, 1.0) == "n/a"
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n"
    table = points_table([Point("bare int8", "all", 32, 1234.5, 1.234, math.nan, 0, 7, 3)])
    assert table.splitlines()[2] == "| bare int8 | all | 32 | 1,234.5 | 1.23 | n/a | 0/7 |"


def test_translate_tables_compare_continuous_with_the_other_modes():
    points = []
    for mode, tput, p50 in (("continuous", 30.0, 10.0), ("static", 20.0, 40.0), ("none", 10.0, 50.0)):
        points += [Point(mode, "all", 32, tput, p50, p50 * 2, 0, 100, 3),
                   Point(mode, "short", 32, tput * 0.7, p50, p50 * 2, 0, 70, 3),
                   Point(mode, "long", 32, tput * 0.3, p50 * 4, p50 * 8, 0, 30, 3)]
    ratios = ratio_table(points, 32)
    assert "| translations/s, static | 1.50x |" in ratios
    assert "| translations/s, none | 3.00x |" in ratios
    assert "| short p50 latency vs static | 0.25x |" in ratios
    assert "n/a" in ratio_table(points, 8)  # a level that was not measured
    assert "| continuous | 32 | 30.00 | 21.00 | 10.0 | 20.0 | 9.00 | 40.0 | 80.0 | 0/100 |" in results_table(points)


def test_batches_wrap_around_and_the_function_loop_counts_texts():
    assert batches(["a", "b", "c"], 2) == [["a", "b"], ["c", "a"]]
    calls: list[int] = []
    w = function_loop(lambda chunk: calls.append(len(chunk)), ["x"] * 5, 4, 0.2, warmup=0.05)
    stats = w.kinds["all"]
    assert w.level == 4 and set(calls) == {4}
    assert 0 < stats.requests <= len(calls) and stats.texts == 4 * stats.requests == 4 * len(stats.latencies)


def test_short_and_long_texts_have_the_right_lengths():
    rng = random.Random(1)
    sentences = [" ".join(["w"] * rng.randint(3, 14)) for _ in range(400)] + [" ".join(["x"] * 30)]
    short, long = short_and_long(sentences, seed=0, want_long=50)
    assert short and all(3 <= len(s.split()) <= 8 for s in short)
    assert len(long) == 50 and all(25 <= len(s.split()) <= 40 for s in long)
    with pytest.raises(UserError, match="got 0 short"):
        short_and_long(["a b"] * 100, seed=0)


def test_the_mixed_source_is_the_same_for_every_mode():
    def draws() -> list[str]:
        source = MixedSource(["s1", "s2"], ["l1"], "m", 4, 0.3, seed=5)
        return [source(w, n).kind for w in range(3) for n in range(200)]

    first = draws()
    assert first == draws() and {"short", "long"} == set(first)
    body = json.loads(MixedSource(["s1"], ["l1"], "m", 1, 0.0, seed=0)(0, 0).body)
    assert body == {"model": "m", "texts": ["s1"], "beam_size": 1}


def test_closed_loop_against_a_real_server_counts_answers(make_server):
    url = make_server().url
    texts = ["the film is superb", "a dull movie", "one two three"]
    w = run_closed_loop(f"{url}/v1/classify", classify_source(texts, "reviews"), 4, 1.0, warmup=0.2,
                        check=check_classify)
    stats = w.kinds["all"]
    assert stats.requests > 0 and stats.errors == 0 and w.first_error is None
    assert stats.texts == stats.requests == len(stats.latencies) and min(stats.latencies) > 0

    def reject(call: Call, body: object) -> str:
        return "rejected"

    rejected = run_closed_loop(f"{url}/v1/classify", classify_source(texts, "reviews"), 2, 0.3, warmup=0.0,
                               check=reject)
    assert rejected.kinds["all"].errors == rejected.kinds["all"].requests > 0
    unknown = run_closed_loop(f"{url}/v1/classify", classify_source(texts, "nope"), 1, 0.3, warmup=0.0)
    assert unknown.first_error is not None and unknown.first_error.startswith("HTTP 404")


def test_wrk_closed_loop_against_a_real_server_counts_answers_and_refusals(make_server):
    url = make_server().url
    texts = ["the film is superb", "a dull movie", "one two three"]
    w = wrk_closed_loop(f"{url}/v1/classify", classify_calls(texts, "reviews"), 4, 1.0, warmup=0.0)
    stats = w.kinds["all"]
    assert stats.requests > 0 and stats.errors == 0 and w.first_error is None and w.seconds >= 1.0
    assert stats.texts == stats.requests and 0 < stats.quantiles[50] <= stats.quantiles[99]
    point = summarize("wrk", [w])
    assert point.throughput == stats.texts / w.seconds and point.p50_ms == stats.quantiles[50] * 1e3
    scraped = httpx.get(f"{url}/metrics", timeout=10).text
    counted = metric(scraped, "seqserve_requests_total", endpoint="/v1/classify", model="reviews", status="200")
    assert counted >= stats.requests  # the server saw every request wrk counted (and those still in flight)
    unknown = wrk_closed_loop(f"{url}/v1/classify", classify_calls(texts, "nope"), 2, 1.0, warmup=0.0)
    assert unknown.kinds["all"].errors == unknown.kinds["all"].requests > 0 and unknown.kinds["all"].texts == 0
    assert unknown.first_error is not None and unknown.first_error.startswith("HTTP 404")
    with pytest.raises(UserError, match="spot-checked answer is wrong"):
        spot_check(f"{url}/v1/classify", classify_calls(texts, "reviews"), lambda call, body: "wrong label")
    spot_check(f"{url}/v1/classify", classify_calls(texts, "reviews"), check_classify)


def test_open_loop_keeps_its_arrival_rate_and_times_from_the_scheduled_start(make_server):
    url = make_server().url
    texts = ["the film is superb", "a dull movie", "one two three"]
    w = run_open_loop(f"{url}/v1/classify", classify_source(texts, "reviews"), 40.0, 1.5, warmup=0.2,
                      check=check_classify, seed=3)
    stats = w.kinds["all"]
    assert w.level == 40 and stats.errors == 0 and w.first_error is None
    scheduled = [t for t in arrivals(40.0, 1.7, seed=3) if 0.2 <= t < 1.7]  # the window's arrivals, known ahead
    assert stats.requests == len(scheduled) and 30 <= len(scheduled) <= 90  # about 60 at 40/s
    assert stats.texts == stats.requests and min(stats.latencies) > 0 and w.seconds >= 1.5


def test_arrivals_are_poisson_and_the_same_for_a_seed():
    times = arrivals(100.0, 50.0, seed=7)
    assert times == arrivals(100.0, 50.0, seed=7) and times != arrivals(100.0, 50.0, seed=8)
    assert times[0] == 0.0 and all(a < b for a, b in zip(times, times[1:], strict=False)) and times[-1] < 50.0
    gaps = np.diff(times)
    assert abs(len(times) - 5000) < 5 * math.sqrt(5000) and abs(gaps.mean() - 0.01) < 0.001


def test_open_loop_counts_requests_beyond_its_in_flight_bound_as_refused():
    """Against a server that never answers, arrivals go on at their rate and the excess is refused, not queued."""
    import asyncio
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # accepts connections (the kernel does), never answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/classify"
    try:
        w = asyncio.run(open_loop(url, classify_source(["x"], "m"), 200.0, 0.5, warmup=0.0, timeout=1.0,
                                  max_in_flight=5))
    finally:
        listener.close()
    stats = w.kinds["all"]
    assert stats.requests == len(arrivals(200.0, 0.5, seed=0)) and stats.texts == 0  # every arrival counted
    assert stats.errors == stats.requests and w.first_error is not None


def test_variants_pair_the_latest_fp32_version_with_its_int8_version(tmp_path):
    def version(number: int, from_version: int | None = None) -> None:
        folder = tmp_path / "m" / str(number)
        folder.mkdir(parents=True)
        config = {"kind": "classifier", "graphs": {}, "tokenizers": {}, "max_length": 8}
        if from_version:
            config["quantization"] = {"method": "static int8 (onnxruntime)", "from_version": from_version}
        (folder / "config.json").write_text(json.dumps(config))

    version(1)
    version(2, from_version=1)
    version(3)
    version(4, from_version=3)
    version(5, from_version=1)
    assert [(v.label, v.version_dir.name) for v in find_variants(tmp_path / "m")] == [("fp32", "3"), ("int8", "4")]


def test_bench_command_reports_user_mistakes_with_exit_2(capsys, tmp_path):
    assert main(["bench", "classify"]) == 2
    assert "give --url" in capsys.readouterr().err
    assert main(["bench", "tag", "--repo", str(tmp_path)]) == 2  # the default model, atis, is not there
    assert "atis: no such model folder" in capsys.readouterr().err
    assert main(["bench", "translate", "--repo", str(tmp_path), "--model", "absent"]) == 2
    assert "no such model folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["bench", "classify", "--levels", "0,8"])
    assert exc.value.code == 2
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["bench", "classify", "--url", nobody, "--levels", "1"]) == 2
    assert f"cannot reach {nobody}" in capsys.readouterr().err
    with pytest.raises(UserError, match="a spot-check request failed"):
        spot_check(f"{nobody}/v1/classify", classify_calls(["a text"], "m"), lambda call, body: None)


@pytest.mark.parametrize("generator", ["wrk", "aiohttp"])
def test_bench_classify_writes_a_report_for_fp32_and_int8(repo, tmp_path, capsys, generator):
    """The repository holds only fp32: the bench quantizes an int8 variant for its own series."""
    shutil.rmtree(repo / "numbers")
    texts = tmp_path / "texts.txt"
    texts.write_text("the film is superb\na dull movie\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(["bench", "classify", "--repo", str(repo), "--model", "reviews", "--levels", "1,2",
                 "--repeats", "1", "--seconds", "0.3", "--warmup", "0.1", "--texts-file", str(texts),
                 "--load-fractions", "0.5,1.1", "--out", str(out), "--generator", generator])
    assert code == 0, capsys.readouterr().err
    figures = json.loads((out / "classify.json").read_text())
    points, opened = figures["closed_loop"], figures["open_loop"]
    assert {(p["series"], p["level"]) for p in points} == {
        (f"{where} {variant}", level) for where in ("service", "bare") for variant in ("fp32", "int8")
        for level in (1, 2)}
    assert all(p["requests"] > 0 and p["errors"] == 0 for p in points + opened)
    for variant in ("fp32", "int8"):  # open loop at half and 1.1x the closed loop's best throughput
        best = max(p["throughput"] for p in points if p["series"] == f"service {variant}")
        offered = [p["level"] for p in opened if p["series"] == f"service {variant}"]
        assert offered == [round(0.5 * best), round(1.1 * best)]
    report = (out / "classify.md").read_text()
    assert "| 2 | " in report.split("## Ratios")[1] and "## Machine" in report
    assert "## Latency against offered load" in report
    assert f"Load generator for the closed loop: {generator} (" in report
    assert (out / "classify.png").stat().st_size > 0 and (out / "classify-load.png").stat().st_size > 0
    assert sorted(p.name for p in (repo / "reviews").iterdir()) == ["1"]  # the repository is left as it was


def test_the_tag_check_wants_one_result_per_text_and_spans_at_their_offsets():
    text = "from new york to boston"
    call = classify_calls([text], "flights")[0]
    token = {"text": "york", "start": 9, "end": 13, "tag": "I-fromloc", "score": 0.9}
    entity = {"label": "fromloc", "start": 5, "end": 13, "text": "new york", "score": 0.9}
    assert check_tag(call, {"results": [{"tokens": [token], "entities": [entity]}]}) is None
    assert "expected 1 result(s)" in str(check_tag(call, {"results": []}))
    shifted = {**entity, "start": 4}
    assert "is not the slice of" in str(check_tag(call, {"results": [{"tokens": [token], "entities": [shifted]}]}))
    assert "malformed" in str(check_tag(call, {"results": [{"tokens": [token]}]}))


def test_bench_tag_writes_a_report_for_fp32_and_int8(repo, tmp_path, capsys):
    """The tiny tagger (flights/1), on the test split its config records; the int8 variant is quantized by the
    bench itself. aiohttp: every answer's offsets are checked."""
    out = tmp_path / "out"
    code = main(["bench", "tag", "--repo", str(repo), "--model", "flights", "--levels", "1,4", "--repeats", "1",
                 "--seconds", "0.3", "--warmup", "0.1", "--texts", "16", "--load-fractions", "0.5",
                 "--out", str(out), "--generator", "aiohttp"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "bench tag: 16 texts" in err and "for the int8 series" in err
    figures = json.loads((out / "tag.json").read_text())
    points, opened = figures["closed_loop"], figures["open_loop"]
    assert {(p["series"], p["level"]) for p in points} == {
        (f"{where} {variant}", level) for where in ("service", "bare") for variant in ("fp32", "int8")
        for level in (1, 4)}
    assert all(p["requests"] > 0 and p["errors"] == 0 and p["throughput"] > 0 for p in points + opened)
    assert {p["series"] for p in opened} == {"service fp32", "service int8"}
    report = (out / "tag.md").read_text()
    assert report.startswith("# Tagging benchmark") and "`TaggerRuntime.tag_texts`" in report
    assert "Texts: 16 utterances (seed 0) from the test split of " in report
    ratios = report.split("## Ratios")[1].split("##")[0]
    rows = [line for line in ratios.splitlines() if line.startswith(("| 1 |", "| 4 |"))]
    assert len(rows) == 2 and all(line.count("x |") == 4 for line in rows)  # every ratio measured, none n/a
    assert "## Latency against offered load" in report and "## Machine" in report
    assert (out / "tag.png").stat().st_size > 0 and (out / "tag-load.png").stat().st_size > 0
    assert sorted(p.name for p in (repo / "flights").iterdir()) == ["1"]  # the repository is left as it was


def test_bench_translate_starts_a_service_per_mode_and_reports_short_and_long(repo, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    words = ["one", "two", "three", "four", "five", "six", "seven"]
    texts.write_text("\n".join(" ".join(words[: 3 + i % 5]) for i in range(60)) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(["bench", "translate", "--repo", str(repo), "--model", "numbers", "--modes", "static",
                 "--levels", "2", "--repeats", "1", "--seconds", "0.5", "--warmup", "0.1", "--beam-size", "1",
                 "--long-fraction", "0.5", "--texts-file", str(texts), "--load-fractions", "0.5", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    figures = json.loads((out / "translate.json").read_text())
    points, opened = figures["closed_loop"], figures["open_loop"]
    assert [(p["series"], p["kind"], p["level"]) for p in points] == [
        ("static", "all", 2), ("static", "short", 2), ("static", "long", 2)]
    assert points[0]["requests"] == points[1]["requests"] + points[2]["requests"] and points[0]["errors"] == 0
    assert [(p["series"], p["kind"]) for p in opened] == [("static", "all"), ("static", "short"), ("static", "long")]
    assert opened[0]["level"] == round(0.5 * points[0]["throughput"]) and opened[0]["errors"] == 0
    assert (out / "translate-load.png").stat().st_size > 0
    assert "| static | 2 |" in (out / "translate.md").read_text()
    assert main(["bench", "translate", "--repo", str(repo), "--model", "numbers", "--modes", "fast"]) == 2


def test_bench_translate_compares_the_shortlist_and_the_bare_engine(repo, shortlisted_version, tmp_path, capsys):
    shutil.copytree(shortlisted_version, repo / "short" / "1")
    texts = tmp_path / "texts.txt"
    words = ["one", "two", "three", "four", "five", "six", "seven"]
    texts.write_text("\n".join(" ".join(words[: 3 + i % 5]) for i in range(60)) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(["bench", "translate", "--repo", str(repo), "--model", "short", "--modes", "continuous,continuous-full",
                 "--levels", "2", "--repeats", "1", "--seconds", "0.5", "--warmup", "0.1", "--beam-size", "2",
                 "--long-fraction", "0.5", "--texts-file", str(texts), "--load-fractions", "", "--engine",
                 "--ratio-level", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    points = json.loads((out / "translate.json").read_text())["closed_loop"]
    assert [p["series"] for p in points if p["kind"] == "all"] == ["continuous", "continuous-full", "bare engine"]
    assert all(p["errors"] == 0 and p["requests"] > 0 for p in points)
    report = (out / "translate.md").read_text()
    assert "continuous with the shortlist / without at concurrency 2" in report
    assert "service (continuous) / bare engine at concurrency 2" in report
    assert main(["bench", "translate", "--repo", str(repo), "--model", "short", "--modes", "static-half"]) == 2


def test_without_data_to_calibrate_on_the_bench_has_no_int8_series(classifier_version, tmp_path, capsys):
    from bench.classify import Variant, with_int8
    from service.engine.repository import read_config, write_json

    source = tmp_path / "repo" / "reviews" / "1"
    shutil.copytree(classifier_version, source)
    config = read_config(source)
    write_json(source / "config.json", {**config, "provenance": {**config["provenance"],
                                                                 "source": str(tmp_path / "gone.csv")}})
    variants = [Variant("fp32", source)]
    assert with_int8(variants, tmp_path / "logs") == variants
    err = capsys.readouterr().err
    assert "no int8 variant" in err and "--calibration-data" in err
