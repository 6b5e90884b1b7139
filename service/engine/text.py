"""Text <-> token ids with the tokenizer saved beside a model (torch-free, shared by training and serving)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


# OpenCC's conversions between Chinese scripts (traditional, simplified, Taiwan, Hong Kong, Japanese kanji).
OPENCC_CONFIGS = ("s2t", "t2s", "s2tw", "tw2s", "s2hk", "hk2s", "s2twp", "tw2sp", "t2tw", "tw2t", "t2hk", "hk2t",
                  "t2jp", "jp2t")


def script_converter(config: str | None) -> Callable[[str], str] | None:
    """OpenCC's converter for `config` (t2s: traditional to simplified, ...), or None for no conversion."""
    if not config:
        return None
    if config not in OPENCC_CONFIGS:
        raise ValueError(f"unknown OpenCC conversion {config!r}; one of {', '.join(OPENCC_CONFIGS)}")
    import opencc

    return opencc.OpenCC(config).convert


class TextEncoder:
    """Wraps a `tokenizers.Tokenizer`; encodes batches into padded id matrices. `script` names an OpenCC
    conversion applied to every text before tokenizing (a model trained on one Chinese script reads both)."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, script: str | None = None) -> None:
        if tokenizer.token_to_id(PAD) != PAD_ID or tokenizer.token_to_id(EOS) != EOS_ID:
            raise ValueError("tokenizer must reserve ids 0..3 for <pad>, <unk>, <s>, </s>")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.script = script
        self.convert = script_converter(script)
        # Truncation lives here rather than in tokenizer.json so one file serves any max length.
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()

    @classmethod
    def load(cls, path: str | Path, max_length: int, script: str | None = None) -> TextEncoder:
        return cls(Tokenizer.from_file(str(path)), max_length, script)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    def ids(self, texts: Sequence[str], add_eos: bool = False) -> list[list[int]]:
        """Token ids per text, truncated to max_length (the EOS, if asked for, counts)."""
        room = self.max_length - (1 if add_eos else 0)
        out = []
        texts = [self.convert(t) for t in texts] if self.convert else list(texts)
        for enc in self.tokenizer.encode_batch(texts, add_special_tokens=False):
            ids = enc.ids[:room]
            if add_eos:
                ids.append(EOS_ID)
            out.append(ids if ids else [UNK_ID])  # an empty text still gets one position
        return out

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """Readable form of each id, for attention plots and API responses.

        A byte-level piece can hold part of a character (CJK and emoji take 3-4 pieces). Such a piece is shown as
        its bytes, "<0xE6>" (SentencePiece's notation), and the piece that completes the character shows it."""
        labels, shown = [], ""
        for n, i in enumerate(ids, start=1):
            text = str(self.tokenizer.decode(list(ids[:n]), skip_special_tokens=False)).rstrip("\ufffd")
            if len(text) > len(shown) and text.startswith(shown):
                labels.append(text[len(shown):])
                shown = text
            else:  # only part of a character so far
                labels.append(self._piece_bytes(i))
        return labels

    def _piece_bytes(self, token_id: int) -> str:
        raw = _BYTE_LEVEL_DECODE.get
        piece = self.tokenizer.id_to_token(token_id) or ""
        return "".join(f"<0x{raw(ch, ord(ch)):02X}>" for ch in piece)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True)).strip()


def _byte_level_alphabet() -> dict[str, int]:
    """The printable character that byte-level BPE writes for each byte (GPT-2's table), mapped back to the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    shifted = iter(range(256, 512))
    return {chr(b if b in printable else next(shifted)): b for b in range(256)}


_BYTE_LEVEL_DECODE = _byte_level_alphabet()


def pad_batch(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(ids (B, T) int64 padded with PAD_ID, lengths (B,) int64)."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    ids = np.full((len(seqs), int(lengths.max(initial=1))), PAD_ID, dtype=np.int64)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = s
    return ids, lengths
