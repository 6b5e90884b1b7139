"""The language model's runtime: scoring, seeded sampling that ignores the batch, stop strings, and word completion
checked against an exhaustive sum over piece paths."""

from __future__ import annotations

import asyncio
import math
import random

import numpy as np
import pytest

from service.batching.lm import LMEngine
from service.batching.scheduler import ContinuousScheduler
from service.engine.lm import LMRuntime, SampleOptions, WordSearch, choose_token, draw_rows, split_partial
from service.engine.repository import read_config
from service.engine.text import BOS_ID, EOS_ID
from service.metrics import Metrics
from tests.conftest import synthetic_sentences


@pytest.fixture(scope="module")
def runtime(lm_version):
    return LMRuntime(lm_version, read_config(lm_version))


def step_by_step(runtime: LMRuntime, ids: list[int]) -> tuple[list[float], np.ndarray]:
    """Each next token's log-prob fed one at a time through the step graph from BOS; and the final distribution."""
    out = runtime.runner.prompt([[BOS_ID]])
    log_probs, states, values = out.log_probs, out.states, []
    for token in ids:
        values.append(float(log_probs[0, token]))
        log_probs, states = runtime.runner.step(np.array([token]), states)
    return values, log_probs[0]


def test_scores_agree_with_the_step_graph_and_sum_to_the_total(runtime):
    text = "the giraffe sleeps near the waterfall today."
    scored = runtime.score([text, "a cat"])[0]
    ids = runtime.encoder.tokenizer.encode(text, add_special_tokens=False).ids
    values, last = step_by_step(runtime, ids)
    np.testing.assert_allclose(scored.log_probs[:-1], values, atol=1e-4)
    assert scored.log_probs[-1] == pytest.approx(float(last[EOS_ID]), abs=1e-4)
    assert scored.tokens[-1] == "</s>" and len(scored.tokens) == len(ids) + 1
    assert scored.log_prob == pytest.approx(sum(scored.log_probs))
    assert scored.perplexity == pytest.approx(math.exp(-scored.log_prob / (len(ids) + 1)))
    fluent, shuffled = runtime.score(["the cat jumps over the fence", "fence the over jumps cat the"])
    assert fluent.perplexity < shuffled.perplexity


def test_a_prefix_alone_and_in_a_padded_batch_give_the_same_distribution(runtime):
    seqs = [[BOS_ID, *runtime.encoder.tokenizer.encode(t, add_special_tokens=False).ids]
            for t in ("a dog", "the hippopotamus runs along the river today", "the")]
    batch = runtime.runner.prompt(seqs)
    for i, seq in enumerate(seqs):
        alone = runtime.runner.prompt([seq])
        np.testing.assert_allclose(alone.log_probs[0], batch.log_probs[i], atol=1e-5)
        for name in alone.states:
            np.testing.assert_allclose(alone.states[name][0], batch.states[name][i], atol=1e-5)


def test_choose_token_obeys_temperature_top_k_and_top_p():
    with np.errstate(divide="ignore"):
        log_probs = np.log(np.array([0.0, 0.0, 0.0, 0.05, 0.5, 0.3, 0.15]))  # ids 0..2 are pad, unk, bos
    rng = np.random.default_rng(0)
    assert choose_token(log_probs, SampleOptions(temperature=0), rng) == 4
    assert choose_token(log_probs, SampleOptions(temperature=0, ignore_eos=True), rng) == 4
    draws = [choose_token(log_probs, SampleOptions(top_k=2), rng) for _ in range(300)]
    assert set(draws) == {4, 5}
    draws = [choose_token(log_probs, SampleOptions(top_p=0.75), rng) for _ in range(300)]
    assert set(draws) == {4, 5}  # 0.5 + 0.3 reach 0.75
    draws = [choose_token(log_probs, SampleOptions(), rng) for _ in range(2000)]
    assert abs(draws.count(4) / 2000 - 0.5) < 0.05 and EOS_ID in draws
    assert EOS_ID not in [choose_token(log_probs, SampleOptions(ignore_eos=True), rng) for _ in range(300)]
    cold = [choose_token(log_probs, SampleOptions(temperature=0.1), rng) for _ in range(200)]
    assert cold.count(4) > 190


def test_rows_drawn_together_get_the_tokens_they_would_get_alone():
    rng = np.random.default_rng(7)
    log_probs = np.log(rng.dirichlet(np.ones(500), size=40)).astype(np.float32)
    options = [SampleOptions(temperature=t, ignore_eos=bool(i % 3 == 0), seed=i)
               for i, t in enumerate(rng.choice([0.0, 0.5, 1.0, 2.0], size=40))]
    for _ in range(5):
        together = draw_rows(log_probs, options, [np.random.default_rng(o.seed) for o in options])
        alone = [choose_token(row, o, np.random.default_rng(o.seed)) for row, o in zip(log_probs, options, strict=True)]
        assert together.tolist() == alone
        log_probs = np.roll(log_probs, 1, axis=1)


def test_generation_stops_at_max_tokens_eos_or_a_stop_string(runtime):
    exact = runtime.generate(["the"], SampleOptions(max_tokens=40, ignore_eos=True, seed=1))[0]
    assert len(exact.token_ids) == 40 and exact.finish_reason == "length" and len(exact.log_probs) == 40
    assert all(p <= 0 for p in exact.log_probs)
    greedy = runtime.generate(["the cat jumps over the fence"], SampleOptions(max_tokens=60, temperature=0))[0]
    assert greedy.finish_reason == "eos" and len(greedy.token_ids) < 60
    stopped = runtime.generate(["the cat"], SampleOptions(max_tokens=60, temperature=0, stop=(" the",)))[0]
    assert stopped.finish_reason == "stop" and " the" not in stopped.text
    assert runtime.encoder.tokenizer.decode(stopped.token_ids).startswith(stopped.text)
    unseeded = runtime.generate(["a"], SampleOptions(max_tokens=5))[0]
    again = runtime.generate(["a"], SampleOptions(max_tokens=5, seed=unseeded.seed))[0]
    assert again.token_ids == unseeded.token_ids  # the seed a result reports reproduces it


def test_a_seeded_sample_is_the_same_alone_and_in_any_batch(runtime):
    rng = random.Random(3)
    prompts = synthetic_sentences(12, seed=5)
    options = [SampleOptions(max_tokens=rng.choice([4, 12, 30]), temperature=rng.choice([0.7, 1.0, 1.5]),
                             top_k=rng.choice([0, 5]), top_p=rng.choice([1.0, 0.9]), seed=i) for i in range(12)]
    alone = [runtime.generate([p.split(" ", 2)[0]], o)[0] for p, o in zip(prompts, options, strict=True)]
    items = [runtime.item(p.split(" ", 2)[0], "generate", o) for p, o in zip(prompts, options, strict=True)]
    order = list(range(12))
    rng.shuffle(order)
    together = runtime.run([items[i] for i in order])
    for i, result in zip(order, together, strict=True):
        assert result.token_ids == alone[i].token_ids


@pytest.mark.parametrize("seed", [0, 1])
def test_scheduler_answers_as_the_runtime_does_under_random_interleavings(runtime, seed):
    """Generation, completion and scoring sharing the iteration scheduler, joining at random iterations."""
    rng = random.Random(seed)
    texts = [s.rsplit(" ", 1)[0] for s in synthetic_sentences(24, seed=40 + seed)]
    tasks = [rng.choice(["generate", "complete", "score"]) for _ in texts]
    options = [SampleOptions(max_tokens=rng.choice([1, 6, 20]), temperature=0.9, seed=i) if task == "generate"
               else 4 if task == "complete" else None for i, task in enumerate(tasks)]
    items = [runtime.item(t, task, o) for t, task, o in zip(texts, tasks, options, strict=True)]
    offline = [runtime.run([item])[0] for item in items]

    async def online():
        metrics, rows = Metrics(), rng.choice([4, 16, 64])
        scheduler = ContinuousScheduler("animals", LMEngine(runtime, metrics, "animals"), metrics, max_rows=rows,
                                        max_tokens=rng.choice([20, 400]), max_queue=100)

        async def one(item):
            await asyncio.sleep(rng.random() * 0.05)  # join at a random iteration
            (future,) = scheduler.submit([item], [len(item.ids)])
            return await future

        results = await asyncio.gather(*[one(i) for i in items])
        await scheduler.close(5)
        return results

    for task, expected, got in zip(tasks, offline, asyncio.run(online()), strict=True):
        if task == "generate":
            assert got.token_ids == expected.token_ids
        elif task == "complete":
            assert [w for w, _ in got.words] == [w for w, _ in expected.words]
            np.testing.assert_allclose([p for _, p in got.words], [p for _, p in expected.words], rtol=1e-4)
        else:
            assert got.log_prob == pytest.approx(expected.log_prob, abs=1e-3)


@pytest.mark.parametrize(("text", "context", "partial"), [
    ("A man is ri", "A man is ", "ri"), ("A man is ", "A man is ", ""), ("Two dogs.", "Two dogs.", ""),
    ("café", "", "café"), ("naïve wor", "naïve ", "wor"), ("我想", "我想", ""), ("l'ho", "l'", "ho"),
])
def test_split_partial(text, context, partial):
    assert split_partial(text) == (context, partial)


def segmentations(runtime: LMRuntime, word: str) -> list[list[int]]:
    """Every way to spell " word" with the vocabulary's pieces."""
    vocab = runtime.encoder.tokenizer.get_vocab()
    by_text = {}
    for i in vocab.values():
        text = runtime.encoder.tokenizer.decode([i])
        if text and i > EOS_ID:
            by_text.setdefault(text, []).append(i)
    target = " " + word
    paths: dict[int, list[list[int]]] = {0: [[]]}
    for end in range(1, len(target) + 1):
        paths[end] = [p + [i] for start in range(end) for p in paths[start]
                      for i in by_text.get(target[start:end], [])]
    return paths[len(target)]


def exact_word_probability(runtime: LMRuntime, context: str, word: str) -> float:
    """P(next word = word): the sum over every piece path that spells it of its probability, times the probability
    that the piece after it ends the word."""
    table = runtime.table
    base = [BOS_ID, *runtime.encoder.tokenizer.encode(context, add_special_tokens=False).ids] if context else [BOS_ID]
    total = 0.0
    for path in segmentations(runtime, word):
        out = runtime.runner.prompt([base])
        log_probs, states, value = out.log_probs[0], out.states, 0.0
        for token in path:
            value += float(log_probs[token])
            step, states = runtime.runner.step(np.array([token]), states)
            log_probs = step[0]
        total += math.exp(value) * float(np.exp(log_probs[table.ends]).sum())
    return total


@pytest.mark.parametrize(("prefix", "context"), [
    ("the eleph", "the"), ("a dog jumps over the mou", "a dog jumps over the"),
    ("the cat runs along the ", "the cat runs along the")])
def test_word_completion_matches_the_exhaustive_sum_across_piece_boundaries(runtime, prefix, context):
    (completion,) = runtime.complete([prefix], k=3)
    _, partial = split_partial(prefix)
    assert completion.partial == partial and len(completion.words) == 3
    probabilities = [p for _, p in completion.words]
    assert probabilities == sorted(probabilities, reverse=True) and all(0 < p <= 1 for p in probabilities)
    word, probability = completion.words[0]
    assert word.startswith(partial) and len(runtime.encoder.tokenizer.encode(" " + word).ids) > 1
    assert probability == pytest.approx(exact_word_probability(runtime, context, word), rel=1e-3)


def test_word_completion_knows_the_words_of_its_language(runtime):
    words = {c.words[0][0] for c in runtime.complete(["the eleph", "the hippo", "a dog sleeps near the water"])}
    assert words == {"elephant", "hippopotamus", "waterfall"}
    (after_space,) = runtime.complete(["the giraffe watches the "], k=5)
    assert {w for w, _ in after_space.words} <= {"fence", "river", "mountain", "meadow", "waterfall"}


def test_a_wider_search_finds_the_same_best_words(runtime):
    item = runtime.item("the kan", "complete", 3)
    narrow = runtime.run([item])[0]
    search = WordSearch(3, item.partial, runtime.table, runtime.encoder, width=64)
    out = runtime.runner.prompt([item.ids])
    parents = search.start(out.log_probs[0], out.token_log_probs[0, :0])
    states = {k: v[np.zeros(len(parents), dtype=np.int64)] for k, v in out.states.items()}
    while search.rows:
        log_probs, states = runtime.runner.step(search.tokens(), states)
        follow = search.advance(log_probs)
        states = {k: v[follow] for k, v in states.items()}
    assert [w for w, _ in search.result().words] == [w for w, _ in narrow.words]
