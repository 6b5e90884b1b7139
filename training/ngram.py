"""Interpolated Kneser-Ney n-gram reference language model over token ids, built on `nltk.lm`.

It scores the events a neural LM over the same tokenizer scores: for each sentence `ids` (without BOS/EOS) it predicts
`ids + [EOS]`, each token given the previous order-1 tokens, left-padded with BOS. Training counts exactly those
events' n-grams (every n-gram of orders 1..N that ends at a predicted token), so no n-gram predicts a pad.

The probabilities are nltk's: `KneserNeyInterpolated.unmasked_score` and `KneserNey.alpha_gamma` run unchanged on nltk's
`NgramCounter`. Two things differ from a plain nltk model:

- speed: nltk's `KneserNey._continuation_counts` scans a whole n-gram table on every call (hours for a Multi30k test
  set); here it reads the same counts from tables built once after training, and scores are memoized per
  (word, context). Same numbers, checked against plain nltk in tests/training/test_ngram.py.
- unseen tokens: nltk's unigram level is the undiscounted continuation-count estimate, which gives 0 to any token never
  seen in training (infinite perplexity). Here the unigram level is discounted like the others and interpolated with
  the uniform 1/V over the full id range `range(vocab_size)` (as in Chen & Goodman, KenLM), so every token scores > 0.

Tokens are the ids written as strings inside the model: nltk's `Vocabulary` looks up strings only (an int is a
TypeError). The vocabulary holds every id, so no valid id ever maps to <UNK>.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from nltk.lm import KneserNeyInterpolated, NgramCounter, Vocabulary
from nltk.lm.smoothing import KneserNey

from service.engine.text import BOS_ID, EOS_ID

Context = tuple[str, ...]


@dataclass
class NgramScore:
    """Total natural-log probability of a set of sequences' predicted tokens."""

    order: int
    log_prob: float  # natural-log total over all predicted tokens
    tokens: int  # predicted tokens (pieces + one EOS per sentence)

    @property
    def perplexity(self) -> float:
        return math.exp(-self.log_prob / self.tokens)

    def as_dict(self) -> dict[str, float | int]:
        return {"perplexity": self.perplexity, "tokens": self.tokens, "log_prob": self.log_prob}


class _TabledKneserNey(KneserNey):  # type: ignore[misc]
    """nltk's KneserNey smoothing with its continuation counts read from tables, and a uniform floor at unigrams.

    `uniform=False` keeps nltk's own unigram score (no floor): the same numbers as plain nltk, for checking."""

    def __init__(self, vocabulary: Vocabulary, counter: NgramCounter, order: int, discount: float, vocab_size: int,
                 uniform: bool = True) -> None:
        super().__init__(vocabulary, counter, order=order, discount=discount)
        self.vocab_size = vocab_size
        self.uniform = uniform
        self._continuations: dict[Context, Counter[str]] = {}
        self._totals: dict[Context, int] = {}

    def reindex(self) -> None:
        """Tabulate what `_continuation_counts` would count, for every context: one pass over the n-gram tables."""
        continuations: dict[Context, Counter[str]] = {}
        totals: Counter[Context] = Counter()
        for k in range(2, self._order + 1):
            for prefix, counts in self.counts[k].items():
                suffix = prefix[1:]
                row = continuations.setdefault(suffix, Counter())
                for word, count in counts.items():
                    if count > 0:
                        row[word] += 1
                        totals[suffix] += 1
        self._continuations, self._totals = continuations, dict(totals)

    def _continuation_counts(self, word: str, context: Context = ()) -> tuple[int, int]:
        row = self._continuations.get(context)
        return (row[word], self._totals[context]) if row else (0, 0)

    def unigram_score(self, word: str) -> float:
        if not self.uniform:
            return float(super().unigram_score(word))
        count, total = self._continuation_counts(word)
        if not total:  # nothing was counted
            return 1.0 / self.vocab_size
        seen = len(self._continuations[()])  # word types with a non-zero continuation count
        d = float(self.discount)
        return max(count - d, 0.0) / total + d * seen / total / self.vocab_size


class KneserNeyModel(KneserNeyInterpolated):  # type: ignore[misc]
    """`nltk.lm.KneserNeyInterpolated` over ids `range(vocab_size)` (as strings), fast to score (see the module doc)."""

    def __init__(self, order: int, vocab_size: int, discount: float = 0.75, counter: NgramCounter | None = None,
                 uniform: bool = True) -> None:
        if order < 2:
            raise ValueError(f"order must be at least 2, got {order}")
        if not 0 < discount <= 1:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        if vocab_size <= max(BOS_ID, EOS_ID):
            raise ValueError(f"vocab_size must hold BOS ({BOS_ID}) and EOS ({EOS_ID}), got {vocab_size}")
        super().__init__(order, discount=discount, vocabulary=Vocabulary(map(str, range(vocab_size))),
                         counter=counter)
        self.vocab_size = vocab_size
        self.discount = discount
        self.estimator = _TabledKneserNey(self.vocab, self.counts, order, discount, vocab_size, uniform)
        self._memo: dict[tuple[str, Context | None], float] = {}
        self.reindex()

    def fit(self, text: Any, vocabulary_text: Any = None) -> None:
        super().fit(text, vocabulary_text)
        self.reindex()

    def reindex(self) -> None:
        """Rebuild the continuation tables after the counts changed (`fit` does it)."""
        self.estimator.reindex()
        self._memo.clear()

    def unmasked_score(self, word: str, context: Context | None = None) -> float:
        key = (word, context)
        p = self._memo.get(key)
        if p is None:  # nltk's recursion calls back here for each lower order, so every level is memoized
            p = self._memo[key] = float(super().unmasked_score(word, context))
        return p


def _padded(ids: Sequence[int], order: int, vocab_size: int) -> list[str]:
    """[BOS] * (order - 1) + ids + [EOS], as the model's string tokens."""
    if any(not 0 <= i < vocab_size for i in ids):
        raise ValueError(f"token ids must be in range({vocab_size}), got {[i for i in ids if not 0 <= i < vocab_size]}")
    return [str(BOS_ID)] * (order - 1) + [str(i) for i in ids] + [str(EOS_ID)]


def _events(sequences: Sequence[Sequence[int]], order: int, vocab_size: int) -> Iterator[list[Context]]:
    """Per sentence: the n-grams of orders 1..order that end at each predicted token."""
    for ids in sequences:
        padded = _padded(ids, order, vocab_size)
        yield [tuple(padded[i - k:i + 1]) for i in range(order - 1, len(padded)) for k in range(order)]


def count_ngrams(train: Sequence[Sequence[int]], vocab_size: int, order: int) -> NgramCounter:
    """nltk's counts of the training events' n-grams; one counter of order N serves every model of order <= N."""
    counter = NgramCounter()
    counter.update(_events(train, order, vocab_size))  # what `fit` does, less its vocabulary look-up (the identity)
    return counter


def kneser_ney(train: Sequence[Sequence[int]], vocab_size: int, order: int, discount: float = 0.75) -> KneserNeyModel:
    """An interpolated Kneser-Ney model of `order` trained on id sequences (without BOS/EOS)."""
    return KneserNeyModel(order, vocab_size, discount, counter=count_ngrams(train, vocab_size, order))


def score(model: KneserNeyModel, sequences: Sequence[Sequence[int]]) -> NgramScore:
    """Log-probability of each sequence's pieces and EOS, each given the previous order-1 tokens (BOS-padded)."""
    n = model.order
    log_prob, tokens = 0.0, 0
    for ids in sequences:
        padded = _padded(ids, n, model.vocab_size)
        for i in range(n - 1, len(padded)):
            p = model.score(padded[i], tuple(padded[i - n + 1:i]))
            if not p > 0:
                raise RuntimeError(f"token {padded[i]} after {padded[i - n + 1:i]} scored {p}")
            log_prob += math.log(p)
            tokens += 1
    return NgramScore(n, log_prob, tokens)


def kneser_ney_reference(train: Sequence[Sequence[int]], valid: Sequence[Sequence[int]],
                         test: Sequence[Sequence[int]], vocab_size: int, orders: Sequence[int] = (2, 3, 4),
                         discount: float = 0.75) -> dict[str, Any]:
    """The order with the lowest validation perplexity, and its validation and test scores."""
    if not orders:
        raise ValueError("orders must not be empty")
    counter = count_ngrams(train, vocab_size, max(orders))
    models = {n: KneserNeyModel(n, vocab_size, discount, counter=counter) for n in orders}  # index before scoring
    valid_scores = {n: score(model, valid) for n, model in models.items()}
    best = min(orders, key=lambda n: valid_scores[n].perplexity)
    return {
        "method": f"interpolated Kneser-Ney, unigrams interpolated with uniform 1/{vocab_size}: "
                  f"nltk KneserNeyInterpolated, order {best}, discount {discount}",
        "order": best,
        "valid": valid_scores[best].as_dict(),
        "test": score(models[best], test).as_dict(),
        "orders": {str(n): s.perplexity for n, s in valid_scores.items()},
    }
