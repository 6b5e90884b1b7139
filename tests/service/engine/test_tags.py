"""Words with offsets in any script, tag schemes and entity spans (numpy and the standard library only)."""

from __future__ import annotations

import pytest

from service.engine.tags import entities, repair_bio, split_tag, split_words


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("fly from St. Louis, to \"Boston\"?", ["fly", "from", "St.", "Louis", ",", "to", '"', "Boston", '"', "?"]),
        ("at 6 a.m. ok...", ["at", "6", "a.m.", "ok..."]),
        ("从北京飞往上海。", ["从", "北", "京", "飞", "往", "上", "海", "。"]),
        ("東京へ行きたい", ["東", "京", "へ", "行", "き", "た", "い"]),
        ("Flug nach Köln 🎉🎉 und 👍🏽!", ["Flug", "nach", "Köln", "🎉🎉", "und", "👍🏽", "!"]),
        ("नमस्ते दुनिया", ["नमस्ते", "दुनिया"]),  # combining marks stay inside their word
        ("mixed中文text", ["mixed", "中", "文", "text"]),
        ("𠮷野家 ok", ["𠮷", "野", "家", "ok"]),  # outside the Basic Multilingual Plane
        ("  \t\n ", []),
    ],
)
def test_split_words_keeps_exact_offsets(text: str, words: list[str]) -> None:
    found = split_words(text)
    assert [w.text for w in found] == words
    for w in found:
        assert text[w.start:w.end] == w.text


def test_entities_read_bio_bioes_and_bilou_leniently() -> None:
    assert entities(["O", "B-city", "I-city", "O", "B-day"]) == [("city", 1, 3), ("day", 4, 5)]
    assert entities(["I-city", "I-city", "B-city", "I-day"]) == [("city", 0, 2), ("city", 2, 3), ("day", 3, 4)]
    assert entities(["S-a", "B-b", "E-b", "S-a"]) == [("a", 0, 1), ("b", 1, 3), ("a", 3, 4)]
    assert entities(["U-a", "B-b", "I-b", "L-b", "O"]) == [("a", 0, 1), ("b", 1, 4)]
    assert entities(["PER", "PER", "O", "LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]  # IO tags without prefixes
    assert entities([]) == []
    assert split_tag("B-fromloc.city_name") == ("B", "fromloc.city_name")


def test_repair_bio_turns_an_opening_i_into_b() -> None:
    assert repair_bio(["I-a", "I-a", "O", "I-b", "B-a", "I-b"]) == (["B-a", "I-a", "O", "B-b", "B-a", "B-b"], 3)
    assert repair_bio(["B-a", "I-a", "O"]) == (["B-a", "I-a", "O"], 0)


def test_crf_marginals_fall_back_to_log_space_when_scores_are_far_apart() -> None:
    """Scores hundreds apart underflow the rescaled recursion; the log-space one gives the same marginals."""
    import numpy as np

    from service.engine.tags import Crf

    rng = np.random.default_rng(1)
    k = 4
    transitions = rng.normal(size=(k, k))
    transitions[:, 0] = -2000.0  # nothing moves into tag 0, as a CRF learns for O -> I-x
    crf = Crf(rng.normal(size=k), transitions, rng.normal(size=k))
    emissions = rng.normal(scale=3.0, size=(3, 5, k))
    emissions[1, 2, 0] = 1000.0  # the emissions want tag 0 where no path can reach it
    lengths = np.array([5, 4, 2])
    with np.errstate(all="ignore"):
        assert not np.isfinite(crf._scaled_marginals(emissions, lengths)).all()
    got = crf.marginals_batch(emissions, lengths)
    expected = crf._log_marginals(emissions, lengths)
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(got[row, :n], expected[row, :n], atol=1e-9)
        np.testing.assert_allclose(got[row, :n].sum(axis=1), 1.0)
        assert not got[row, n:].any()
