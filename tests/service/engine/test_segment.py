"""Sentence spans for paragraphs, and translations joined back with the text's own whitespace."""

from __future__ import annotations

import pytest

from service.engine.segment import sentence_spans
from service.engine.translator import Alternative, Translation, join_sentences


@pytest.mark.parametrize(("language", "text", "sentences"), [
    ("en", "Two dogs play. A man runs!  Is it?\n\nYes.", ["Two dogs play.", "A man runs!", "Is it?", "Yes."]),
    ("en", "  Dr. Smith arrived at 3 p.m. yesterday.  ", ["Dr. Smith arrived at 3 p.m. yesterday."]),
    ("zh", "欢迎来北京。你好吗？我很好！", ["欢迎来北京。", "你好吗？", "我很好！"]),
    ("zh", "歡迎來北京。謝謝", ["歡迎來北京。", "謝謝"]),
    ("de", "Ein Hund läuft. Zwei Katzen schlafen.", ["Ein Hund läuft.", "Zwei Katzen schlafen."]),
    ("xx", "One sentence. Another one.", ["One sentence.", "Another one."]),  # no rules: generic ones
    ("en", "no full stop at all", ["no full stop at all"]),
])
def test_sentence_spans_cover_each_sentence_without_its_whitespace(language, text, sentences):
    spans = sentence_spans(text, language)
    assert [text[s:e] for s, e in spans] == sentences
    assert all(not text[s:e][0].isspace() and not text[s:e][-1].isspace() for s, e in spans)
    assert spans == sorted(spans) and all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


def _translation(text: str, score: float, ids: list[int], alternatives: int = 0) -> Translation:
    alts = [Alternative(f"{text}~{i}" if i else text, score - i, [*ids, i]) for i in range(alternatives)]
    return Translation(text, score, None, ids, [9], (None, None), alts)  # type: ignore[arg-type]


def test_joined_sentences_keep_the_texts_whitespace_and_their_own_answers():
    text = " One dog.  Two cats!\n\nEnd. "
    spans = sentence_spans(text, "en")
    parts = [_translation("X.", -1.0, [1], 2), _translation("Y!", -2.0, [2], 2), _translation("Z.", -3.0, [3], 1)]
    joined = join_sentences(text, spans, parts)
    assert joined.text == " X.  Y!\n\nZ. "
    assert joined.score == pytest.approx(-2.0) and joined.target_ids == [1, 2, 3]
    assert [(s.start, s.end, s.translation.text) for s in joined.sentences] == [
        (1, 9, "X."), (11, 20, "Y!"), (22, 26, "Z.")]
    # the i-th alternative joins every sentence's i-th (the last one where a sentence has fewer)
    assert [a.text for a in joined.alternatives] == [" X.  Y!\n\nZ. ", " X.~1  Y!~1\n\nZ. "]
    assert joined.alternatives[1].score == pytest.approx((-2 - 3 - 3) / 3)


@pytest.mark.parametrize(("text", "target", "expected"), [
    ("欢迎来北京。谢谢！", "en", "X. Y!"),  # no space between Chinese sentences: English gets one
    ("欢迎来北京。\n谢谢！", "en", "X.\nY!"),
    ("One dog. Two cats!", "zh", "X.Y!"),  # and Chinese gets none
    ("One dog.\n\nTwo cats!", "zh", "X.\n\nY!"),
    ("One dog.   Two cats!", "de", "X.   Y!"),
])
def test_the_gap_between_sentences_suits_the_target_language(text, target, expected):
    language = "zh" if "。" in text else "en"
    joined = join_sentences(text, sentence_spans(text, language),
                            [_translation("X.", -1.0, [1]), _translation("Y!", -1.0, [2])], target)
    assert joined.text == expected
