"""Sentence segmentation of a text before translation (sentencex: rules for many languages, 。！？ included)."""

from __future__ import annotations


def sentence_spans(text: str, language: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, without the whitespace around it; the text itself when it holds
    one sentence. sentencex falls back to generic rules for a language it has none for."""
    from sentencex import segment

    spans, cursor = [], 0
    for piece in segment(language, text):
        start = text.find(piece, cursor)
        if start < 0:  # sentencex returns the text cut in order; if it ever changes a piece, keep the text whole
            return [(0, len(text))]
        cursor = start + len(piece)
        stripped = piece.strip()
        if stripped:
            lead = len(piece) - len(piece.lstrip())
            spans.append((start + lead, start + lead + len(stripped)))
    return spans or [(0, len(text))]
