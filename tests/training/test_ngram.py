import math
import random

import pytest
from nltk.lm import KneserNeyInterpolated, Vocabulary

from training.ngram import KneserNeyModel, NgramScore, count_ngrams, kneser_ney, kneser_ney_reference, score

V = 14  # ids 0..3 are special; 12 and 13 never occur in training


def corpus(n, seed):
    rng = random.Random(seed)
    return [[rng.choice(range(4, 12)) for _ in range(rng.randint(0, 6))] for _ in range(n)]


def contexts(seqs, order):
    """Every context the sequences' events use, plus unseen ones."""
    out = {("2",) * (order - 1), ("12",) * (order - 1), ("13", "2", "5")[-(order - 1):]}
    for ids in seqs:
        padded = ["2"] * (order - 1) + [str(i) for i in ids] + ["3"]
        out.update(tuple(padded[i - order + 1:i]) for i in range(order - 1, len(padded)))
    return sorted(out)


def brute_force_unigram(train, discount):
    """The floored unigram level from the raw events: (N1+(. w) - d) / N1+(. .) + d * types / N1+(. .) / V."""
    bigrams = {(prev, w) for ids in train for prev, w in zip([2, *ids], [*ids, 3], strict=True)}
    cc = {}
    for _, w in bigrams:
        cc[str(w)] = cc.get(str(w), 0) + 1
    total = len(bigrams)
    return lambda w: max(cc.get(w, 0) - discount, 0) / total + discount * len(cc) / total / V


@pytest.mark.parametrize("order", [2, 3, 4])
def test_fast_path_equals_plain_nltk(order):
    train, held_out = corpus(60, 0), corpus(10, 1)
    vocab = Vocabulary(map(str, range(V)))
    plain = KneserNeyInterpolated(order, discount=0.75, vocabulary=vocab, counter=count_ngrams(train, V, order))
    fast = KneserNeyModel(order, V, 0.75, counter=count_ngrams(train, V, order), uniform=False)
    floored = kneser_ney(train, V, order)
    words = [str(i) for i in range(V)]
    ctxs = contexts(held_out, order)
    for ctx in ctxs:
        for w in words:
            assert fast.score(w, ctx) == pytest.approx(plain.score(w, ctx), abs=1e-12)
    # The floor changes only nltk's unigram level: plain nltk with that level swapped in agrees too.
    plain.estimator.unigram_score = brute_force_unigram(train, 0.75)
    for ctx in ctxs:
        for w in words:
            assert floored.score(w, ctx) == pytest.approx(plain.score(w, ctx), abs=1e-12)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_distributions_sum_to_one_and_nothing_scores_zero(order):
    train = corpus(60, 2)
    model = kneser_ney(train, V, order, discount=0.6)
    for ctx in contexts(corpus(5, 3), order):
        probs = [model.score(str(w), ctx) for w in range(V)]
        assert math.fsum(probs) == pytest.approx(1.0, abs=1e-12)
        assert min(probs) > 0


def test_unseen_token_gets_probability_and_nltk_alone_gives_zero():
    train = corpus(40, 4)
    model = kneser_ney(train, V, 3)
    assert model.score("12", ("2", "2")) > 0
    assert math.isfinite(score(model, [[12, 13, 5]]).perplexity)
    nltk_unigrams = KneserNeyModel(3, V, counter=count_ngrams(train, V, 3), uniform=False)
    assert nltk_unigrams.score("12", ("2", "2")) == 0  # why the unigram level is floored with 1/V


def test_hand_computed_bigram_and_perplexity_arithmetic():
    model = kneser_ney([[5]], vocab_size=8, order=2)  # events 2->5, 5->3; P1(w) = max(cc - d, 0)/2 + d*2/2/8
    p_seen = 0.25 + 0.75 * (0.25 / 2 + 0.09375)  # P(5 | 2) = P(3 | 5)
    got = score(model, [[5]])
    assert (got.order, got.tokens) == (2, 2)
    assert got.log_prob == pytest.approx(2 * math.log(p_seen))
    assert got.perplexity == pytest.approx(1 / p_seen)
    unseen = score(model, [[6]])  # P(6 | 2) = d * P1(6); context (6,) unseen: P(3 | 6) = P1(3)
    assert unseen.log_prob == pytest.approx(math.log(0.75 * 0.09375) + math.log(0.21875))
    assert NgramScore(3, log_prob=-10 * math.log(4), tokens=10).perplexity == pytest.approx(4)
    assert score(model, [[], [5, 6, 7]]).tokens == 1 + 4  # pieces plus one EOS per sentence


def test_a_shared_higher_order_counter_gives_the_same_model():
    train = corpus(50, 5)
    shared = count_ngrams(train, V, 4)
    for order in (2, 3):
        alone, from_shared = kneser_ney(train, V, order), KneserNeyModel(order, V, counter=shared)
        assert score(from_shared, corpus(10, 6)).log_prob == pytest.approx(score(alone, corpus(10, 6)).log_prob,
                                                                            abs=1e-9)


def test_reference_picks_the_order_by_validation():
    # The token after 5 depends on the one before it: a trigram sees that, a bigram does not.
    train = [[4, 5, 6], [7, 5, 8]] * 30
    valid, test = [[4, 5, 6], [7, 5, 8]], [[7, 5, 8]]
    ref = kneser_ney_reference(train, valid, test, V, orders=(2, 3))
    assert ref["order"] == 3 and ref["orders"]["3"] < ref["orders"]["2"]
    assert ref["valid"]["perplexity"] == ref["orders"]["3"] and ref["valid"]["tokens"] == 8
    assert ref["test"]["tokens"] == 4 and ref["test"]["perplexity"] > 1
    assert "nltk KneserNeyInterpolated, order 3, discount 0.75" in ref["method"]


def test_bad_input():
    with pytest.raises(ValueError, match="range"):
        kneser_ney([[4, V]], V, 2)
    with pytest.raises(ValueError, match="discount"):
        kneser_ney([[4]], V, 2, discount=0.0)
    with pytest.raises(ValueError, match="order"):
        kneser_ney([[4]], V, 1)
