"""Train a byte-level BPE tokenizer with the `tokenizers` library.

Byte-level BPE covers any Unicode (CJK without spaces, emoji, mixed scripts) with no unknown
token: a character never seen in training falls back to its UTF-8 bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from service.engine.text import SPECIAL_TOKENS

# CJK ideographs (the unified blocks, extension A, compatibility ideographs and the supplementary planes' blocks).
CJK_IDEOGRAPHS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_CJK = re.compile(f"[{CJK_IDEOGRAPHS}]")
CJK_SHARE = 0.05  # texts with at least this share of CJK ideographs among their characters get them isolated


def cjk_share(texts: Sequence[str]) -> float:
    """The share of CJK ideographs among the non-space characters of `texts`."""
    chars = sum(len(t) - t.count(" ") for t in texts)
    return sum(len(_CJK.findall(t)) for t in texts) / max(chars, 1)


def train_tokenizer(texts: Iterable[str], vocab_size: int, lowercase: bool = False,
                    split_cjk: bool | None = None) -> Tokenizer:
    """A byte-level BPE tokenizer trained on `texts`; ids 0..3 are <pad>, <unk>, <s>, </s>.

    `split_cjk` (by default: when CJK ideographs make at least 5 % of the characters) makes each ideograph its own
    pre-token, so Chinese, written without spaces, is read character by character, each seen character one token,
    instead of as whole clauses that BPE would cut into rare multi-character pieces. It is saved in the tokenizer
    file, so serving splits alike."""
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 256}, got {vocab_size}")
    texts = list(texts)
    if split_cjk is None:
        split_cjk = cjk_share(texts) >= CJK_SHARE
    tok = Tokenizer(models.BPE(unk_token=None))
    steps: list[normalizers.Normalizer] = [normalizers.NFKC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(steps)
    if split_cjk:  # no prefix space: it would come back as a space between every two characters
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(f"[{CJK_IDEOGRAPHS}]"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok
